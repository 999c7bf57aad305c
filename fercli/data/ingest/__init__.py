"""Core of `fer prepare`: read FER2013 or CK+ in any accepted layout into the prepared format.

Accepted inputs (SRC):

    fer2013  fer2013.csv                       the challenge CSV (emotion,pixels,Usage)
             DIR/train/<class>/*.jpg + DIR/test/<class>/*.jpg   the image-folder layout
                                               (DIR may also be the parent of a single such folder)
             a .zip of either
    ck+      DIR/cohn-kanade-images/S###/###/*.png + DIR/Emotion/S###/###/*_emotion.txt
                                               the raw CK+ release (faces are detected and cropped)
             DIR/<class>/S###_###_########.png  the CK+48 face-crop layout (or its parent)
             a .zip of either

Everything is parsed and validated before anything is written; the output is then written
atomically with `fercli.data.prepared.write_prepared`, so a bad input leaves no output directory.
The input is only ever read. Every problem the user can fix raises a one-line FerError that
names the file (and line); `skip_bad=True` skips bad images/rows/labels and counts them instead.

This package never imports Typer or Rich: it returns a frozen `PrepareResult` that the CLI
renders, and reports progress through an optional `progress(done, total)` callback.

Modules: fer2013 and ckplus (one reader each), trees (folder / zip input), common (what
both readers share). Images are decoded by fercli.vision.images and faces found and cropped by
fercli.vision.faces, the same code `fer predict` uses.
"""

from fercli.data.ingest.ckplus import parse_ck_emotion, prepare_ckplus
from fercli.data.ingest.common import PrepareResult, ProgressFn, find_duplicates
from fercli.data.ingest.fer2013 import prepare_fer2013

__all__ = [
    "PrepareResult",
    "ProgressFn",
    "find_duplicates",
    "parse_ck_emotion",
    "prepare_ckplus",
    "prepare_fer2013",
]
