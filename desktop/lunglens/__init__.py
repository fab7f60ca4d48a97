"""LungLens: an offline triage aid for chest CT and X-ray scans.

LungLens ranks scans by the probability a quantized ONNX model gives to COVID-19 findings so a
radiologist can look at the most suspicious ones first. It is **not** a diagnostic device.
"""

__version__ = "0.1.0"

DISCLAIMER = "Triage aid only - not a diagnosis. Results must be reviewed by a qualified clinician."
