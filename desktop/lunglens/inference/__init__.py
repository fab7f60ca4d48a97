"""CPU inference with onnxruntime: cached engines, scan classification, series aggregation."""

from lunglens.errors import ModalityMismatch  # re-exported: callers met it here first
from lunglens.inference.aggregate import AGGREGATORS, aggregate, top_slices
from lunglens.inference.classify import (
    Cancelled,
    classify_scan,
    decide,
    label_index,
    result_from_probs,
    slice_probabilities,
)
from lunglens.inference.engine import Engine, batches, clear_engines, get_engine, physical_cores
from lunglens.inference.modality import (
    ModalityCheck,
    check_modality,
    choose_model,
    modality_notes,
    routing_modality,
)
from lunglens.inference.result import ScanResult

__all__ = [
    "AGGREGATORS",
    "Cancelled",
    "Engine",
    "ModalityCheck",
    "ModalityMismatch",
    "ScanResult",
    "aggregate",
    "batches",
    "check_modality",
    "choose_model",
    "classify_scan",
    "clear_engines",
    "decide",
    "get_engine",
    "label_index",
    "modality_notes",
    "physical_cores",
    "result_from_probs",
    "routing_modality",
    "slice_probabilities",
    "top_slices",
]
