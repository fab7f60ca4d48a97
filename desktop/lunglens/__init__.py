"""LungLens: an offline triage aid for chest CT and X-ray scans.

LungLens ranks scans by the probability a quantized ONNX model gives to COVID-19 findings so a
radiologist can look at the most suspicious scans first. It is **not** a diagnostic device.

Importing this package turns onnxruntime's telemetry off (:data:`TELEMETRY_ENV`): every entry point
(CLI, GUI, self-test, benchmarks, the bundled app) imports ``lunglens`` before ``onnxruntime``.
"""

import os
import sys

__version__ = "0.1.0"

#: The model choice "automatic" (``--model auto``, the app's "Automatic (by modality)"): each
#: scan is scored by its modality's default model. Here, not in ``batch``, so that the CLI's
#: argument parser names it without importing numpy and onnxruntime.
AUTO_MODEL = "auto"

DISCLAIMER = "Triage aid only - not a diagnosis. Results must be reviewed by a qualified clinician."

#: onnxruntime >= 1.x sends usage events to ``mobile.events.data.microsoft.com`` (DNS lookups and
#: TLS connections about 8 s after a session is created, seen with strace on 1.32.0) unless this
#: variable is ``1`` when onnxruntime is *imported*; ``onnxruntime.disable_telemetry_events()``
#: alone does not stop it. Forced, not defaulted: an offline hospital tool sends nothing, whatever
#: the environment says. ``tests/test_offline.py`` checks it under strace.
TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"


#: True when onnxruntime had been imported before this package without telemetry turned off: it
#: has then read its setting already, and ``lunglens selftest`` fails.
ONNXRUNTIME_IMPORTED_FIRST = "onnxruntime" in sys.modules and os.environ.get(TELEMETRY_ENV) != "1"


def disable_telemetry() -> None:
    """Force onnxruntime's telemetry off for this process and its children (idempotent)."""
    os.environ[TELEMETRY_ENV] = "1"


disable_telemetry()
