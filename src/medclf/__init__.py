"""medclf: medical image classifiers that train on a laptop CPU and scale to GPUs.

Research and education use only. No output of medclf is a medical diagnosis.
"""

from __future__ import annotations

import os as _os

# ONNX Runtime's official builds record usage events under ~/.cache/Microsoft/DeveloperTools and upload them. It
# reads this switch once, when it is imported, so it is set here, before any medclf code can import it; child
# processes (the Streamlit app, benchmark servers) inherit it. An explicit ORT_DISABLE_TELEMETRY=0 stands.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"

DISCLAIMER = "Research use only: this is not a diagnosis. A qualified clinician must review every case."

__all__ = ["DISCLAIMER", "__version__"]
