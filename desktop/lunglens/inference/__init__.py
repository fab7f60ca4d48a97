"""CPU inference with onnxruntime: cached engines, scan classification, series aggregation."""

from lunglens.errors import ModalityMismatch  # re-exported: callers met it here first
from lunglens.inference.aggregate import AGGREGATORS, aggregate, top_slices
from lunglens.inference.classify import (
    Cancelled,
    classify_scan,
    label_index,
    result_from_probs,
    slice_probabilities,
)
from lunglens.inference.decision import decide, decide_classes
from lunglens.inference.engine import (
    BATCH_SIZE,
    DISABLED_OPTIMIZERS,
    Engine,
    batches,
    clear_engines,
    get_engine,
    open_session,
    physical_cores,
)
from lunglens.inference.gate import GateVerdict, check_chest, require_chest
from lunglens.inference.modality import (
    Mismatch,
    ModalityCheck,
    check_modality,
    choose_model,
    find_mismatch,
    modality_notes,
    routing_modality,
    with_gate,
)
from lunglens.inference.result import ScanResult
from lunglens.inference.wording import (
    decision_words,
    format_prob,
    format_threshold,
    headline,
    slice_numbers,
    triage_headline,
)

__all__ = [
    "AGGREGATORS",
    "BATCH_SIZE",
    "DISABLED_OPTIMIZERS",
    "Cancelled",
    "Engine",
    "GateVerdict",
    "Mismatch",
    "ModalityCheck",
    "ModalityMismatch",
    "ScanResult",
    "aggregate",
    "batches",
    "check_chest",
    "check_modality",
    "choose_model",
    "classify_scan",
    "clear_engines",
    "decide",
    "decide_classes",
    "decision_words",
    "find_mismatch",
    "format_prob",
    "format_threshold",
    "get_engine",
    "headline",
    "label_index",
    "modality_notes",
    "open_session",
    "physical_cores",
    "require_chest",
    "result_from_probs",
    "routing_modality",
    "slice_numbers",
    "slice_probabilities",
    "top_slices",
    "triage_headline",
    "with_gate",
]
