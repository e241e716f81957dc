"""medclf: medical image classifiers that train on a laptop CPU and scale to GPUs.

Research and education use only. No output of medclf is a medical diagnosis.
"""

from __future__ import annotations

__version__ = "0.1.0"

DISCLAIMER = "Research use only: this is not a diagnosis. A qualified clinician must review every case."

__all__ = ["DISCLAIMER", "__version__"]
