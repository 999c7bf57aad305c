"""fercli's Python API: the stable surface `import fercli` gives (see fercli.__all__).

    rec = fercli.Recognizer()                 # the shipped model, or a run dir / .pt / .npz / .onnx
    faces = rec.predict("photo.jpg")          # path, bytes, file object, PIL image or numpy array
    df = rec.predict_folder("photos/")        # pandas DataFrame, one row per face
    tl = rec.predict_video("clip.mp4", every=5, smooth=0.3)
    fercli.plot_emotions(tl, "emotions.png")

Everything here is the path `fer predict` runs (fercli.infer.recognizer, fercli.infer.predict,
fercli.infer.video): the same image gives the same faces, labels and probabilities as
`fer predict --json`. Wrong input raises FerError with a one-line message, in the API's own
terms (`device='cuda'`, where `fer predict` says `--device cuda`).

A colour numpy array is read as BGR, the OpenCV convention (`cv2.imread`, `cv2.VideoCapture`
frames), as the `fer` package and deepface read it; pass `color="rgb"` for an array from PIL,
imageio or matplotlib. Paths, bytes, file objects and PIL images carry their own channel order.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fercli.errors import FerError
from fercli.infer import recognizer as _core
from fercli.infer.predict import PredictConfig, results_frame, run_predict
from fercli.infer.recognizer import Face
from fercli.infer.video import VideoConfig, run_video, timeline_frame
from fercli.plots import plot_emotions

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Face", "FerError", "Recognizer", "plot_emotions"]

# A `fer predict` option in a message (`--device cuda`, `--detector 'foo'`, `--margin must ...`),
# with its value when one follows: the API names it as the keyword argument it is.
_OPTION = re.compile(r"--(model|device|backend|precision|detector|tta|margin|batch-size|detect-max-side)\b"
                     r"(?: ('[^']*'|(?!(?:must|is|needs|runs|requested|applies|and|or)\b)[^\s:;,()]+))?")


def keyword_terms(message: str) -> str:
    """A message of the shared core in the API's vocabulary: `--device cuda` → `device='cuda'`."""
    def keyword(m: re.Match[str]) -> str:
        name = m.group(1).replace("-", "_")
        return f"{name}={m.group(2).strip(chr(39))!r}" if m.group(2) else name
    return _OPTION.sub(keyword, message)


class Recognizer(_core.Recognizer):
    __doc__ = _core.Recognizer.__doc__

    @functools.wraps(_core.Recognizer.__init__)  # the same signature and defaults (PredictConfig's)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        except FerError as exc:  # the settings are keyword arguments here, not flags
            raise FerError(keyword_terms(str(exc)), exc.exit_code) from None

    def predict_folder(self, folder: str | Path | list[str | Path], *, on_progress: Any = None) -> pd.DataFrame:
        """Every image under `folder` (recursively; jpg jpeg png bmp webp tif tiff), or a list
        of files and folders, as a DataFrame: one row per face with path, face, x, y, w, h,
        label, probability, p_<class> for every class and error. An image without a face, or
        that cannot be read, gets one row with its note in `error` (the others still run)."""
        inputs = tuple(str(p) for p in folder) if isinstance(folder, (list, tuple)) else (str(folder),)
        cfg = PredictConfig(inputs=inputs, batch_size=self.batch_size)  # model and settings: self's
        result = run_predict(cfg, recognizer=self, on_progress=on_progress)
        return results_frame(result.images, self.classes)

    def predict_video(self, path: str | Path, *, every: int = 1, smooth: float | None = None,
                      max_frames: int | None = None, on_frame: Any = None) -> pd.DataFrame:
        """Faces through a video file, as a DataFrame: one row per face per analysed frame
        (every `every`-th frame, up to `max_frames` read) with path, frame, time_s, track (IoU
        tracks across frames), x, y, w, h, label, probability and p_<class>. `smooth` = alpha
        in (0, 1] averages each track's probabilities exponentially (alpha = newest frame's
        weight). fercli.plot_emotions draws it."""
        cfg = VideoConfig(source=str(path), every=every, max_frames=max_frames, smooth=smooth)
        result = run_video(cfg, recognizer=self, on_frame=on_frame)
        return timeline_frame(result, self.classes)
