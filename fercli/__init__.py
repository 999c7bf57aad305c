"""fercli: facial expression recognition with the OBSR-Net bilinear ResNet34.

The Python API (fercli.api) is imported on first use, so `fer --help` stays fast:

    import fercli
    rec = fercli.Recognizer()
    faces = rec.predict("photo.jpg")
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["Face", "FerError", "Recognizer", "plot_emotions", "__version__"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from fercli import api

        return getattr(api, name)
    raise AttributeError(f"module 'fercli' has no attribute {name!r}")
