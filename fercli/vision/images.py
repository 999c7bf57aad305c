"""The one image decoder of `fer prepare` and `fer predict`: file bytes → 8-bit pixels.

Training data and the photos `fer predict` classifies go through the same code, so the same
file gives the same pixels in both commands. The policy, for every format and mode:

* the size is read from the header before decoding: more than MAX_IMAGE_PIXELS is refused,
  and a JPEG without its end-of-image marker is refused as truncated;
* the EXIF orientation is applied, by prepare as well as predict: `fer predict` always
  did (a phone photo is stored sideways and tagged), and a training image is the same kind
  of file: without it the same photo would be upright in one command and sideways in the
  other. FER2013 and CK+ carry no orientation tags, so their prepared data do not change;
* transparency is composited on white (a cut-out face on a transparent background looks
  as it does in a viewer, not like whatever colour the hidden pixels happen to hold);
* palette, CMYK, YCbCr, 1-bit and other PIL modes become RGB first; 16-bit samples are
  rounded to 8 bits; 32-bit integer and float images are scaled so their maximum is 255;
* colour becomes grey with OpenCV's ITU-R BT.601 weights (cv2.COLOR_BGR2GRAY).

JPEG and PNG, the common cases, are decoded by OpenCV after a header check of a few
microseconds (`_sniff_header`); PIL decodes everything else. Problems raise `BadImage`,
which callers turn into a FerError (or a skipped item, or a per-image error) naming the file.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

#: Images with more pixels than this are refused before decoding, so a 20000x20000 PNG
#: cannot exhaust memory. PIL's own decompression-bomb limit is set to the same value; its
#: warning is silenced because our check reports such images itself.
MAX_IMAGE_PIXELS = 50_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# PIL's notes on odd files ("Corrupt EXIF data", ...) would break the one-line error output;
# what matters about a file is reported as BadImage or a conversion reason instead.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")

#: A file (or zip member) larger than this is refused rather than read into memory.
MAX_FILE_BYTES = 2 << 30


class BadImage(Exception):
    """An unreadable/unsafe image; the caller turns it into a FerError naming the file."""


# The file suffixes taken as images when a folder is given (predict, calibration sets).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

_PIL_MODE_REASON = {
    "P": "palette", "PA": "palette", "CMYK": "cmyk", "1": "1-bit", "LA": "alpha", "La": "alpha",
    "RGBA": "rgba", "RGBa": "rgba", "RGB": "rgb", "YCbCr": "rgb", "LAB": "lab", "HSV": "hsv",
    "F": "float", "I": "32-bit",
}
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_ORIENTATION_TAG = 0x0112
#: EXIF orientation → the numpy view that shows the image upright (as PIL's exif_transpose).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def read_file_bytes(path: Path | str) -> bytes:
    """Path.read_bytes, refusing (BadImage) a file over MAX_FILE_BYTES; OSError as it comes."""
    size = Path(path).stat().st_size
    if size > MAX_FILE_BYTES:
        raise BadImage(f"file too large ({size} bytes)")
    return Path(path).read_bytes()


def read_image_file(path: Path | str) -> bytes:
    """The bytes of an image file; BadImage if it cannot be read or is absurdly large."""
    try:
        return read_file_bytes(path)
    except OSError as exc:
        raise BadImage(f"cannot read file ({exc.strerror or exc})") from None


def image_size(data: bytes) -> tuple[int, int, str, str]:
    """(width, height, PIL mode, format) from the header only; raises BadImage."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            return int(w), int(h), str(im.mode), str(im.format or "")
    except Image.DecompressionBombError as exc:  # over 2 x MAX_IMAGE_PIXELS: PIL refuses itself
        m = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(m.group(1)) / 1e6:.0f} megapixels" if m else "too many pixels"
        raise BadImage(
            f"image too large: {size} (limit {MAX_IMAGE_PIXELS // 1_000_000} megapixels)"
        ) from None
    except UnidentifiedImageError:
        raise BadImage("corrupt or unsupported image (cannot identify the format)") from None
    except Exception as exc:  # PIL raises many types on malformed headers
        raise BadImage(f"corrupt image ({type(exc).__name__}: {exc})") from None


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PNG_SIG = b"\x89PNG\r\n\x1a\n"


def _sniff_header(data: bytes) -> tuple[int, int, str, str] | None:
    """(w, h, mode, format) for the common JPEG/PNG cases straight from the header bytes, in
    a few microseconds (PIL.Image.open takes ~20); None means "ask PIL" (other formats,
    palette, CMYK, low bit depths, anything unusual or malformed)."""
    if data[:8] == _PNG_SIG:
        if data[12:16] != b"IHDR" or len(data) < 26:
            return None
        w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        depth, ctype = data[24], data[25]
        mode = {(0, 8): "L", (2, 8): "RGB", (6, 8): "RGBA", (0, 16): "I;16",
                (2, 16): "RGB", (6, 16): "RGBA"}.get((ctype, depth))
        return (w, h, mode, "PNG") if mode else None
    if data[:3] != b"\xff\xd8\xff":
        return None
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_SOF:
            precision, comps = data[i + 4], data[i + 9]
            h, w = int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
            mode = {1: "L", 3: "RGB"}.get(comps) if precision == 8 else None
            return (w, h, mode, "JPEG") if mode and h > 0 else None
        if marker == 0xDA:  # scan data before any frame header
            return None
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def _has_jpeg_eoi(data: bytes) -> bool:
    # In entropy-coded JPEG data 0xFF is always stuffed (FF00) or a restart marker, so FFD9
    # only appears as the end-of-image marker (or inside an embedded EXIF thumbnail).
    return data.rfind(b"\xff\xd9", max(0, len(data) - 4096)) >= 0 or data.rfind(b"\xff\xd9") >= 0


def _may_have_exif(data: bytes, fmt: str) -> bool:
    """False when the file surely has no EXIF block (so no orientation to read): a JPEG keeps
    it in an APP1 segment near the start, a PNG in an eXIf chunk. Other formats: ask PIL."""
    if fmt == "JPEG":
        return data.find(b"Exif\x00\x00", 0, 1 << 16) >= 0
    if fmt == "PNG":
        return b"eXIf" in data
    return True


def _orientation(im: Image.Image) -> int:
    try:
        o = int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block must not lose the picture
        return 1
    return o if o in _ORIENT else 1


def _to_uint8(a: np.ndarray, reasons: list[str]) -> np.ndarray:
    """16-bit samples rounded to 8 bits; 32-bit integer / float scaled so the maximum is 255."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:
        reasons.append("16-bit")
        return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    reasons.append("float" if a.dtype.kind == "f" else "32-bit")
    f = a.astype(np.float64)
    return np.clip(np.rint(f * 255.0 / max(float(f.max()), 1.0)), 0, 255).astype(np.uint8)


def _on_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite uint8 pixels (H, W) or (H, W, C) with uint8 alpha (H, W) on opaque white."""
    if bool(alpha.min() == 255):
        return np.ascontiguousarray(colour)
    a = alpha.astype(np.uint32)
    if colour.ndim == 3:
        a = a[:, :, None]
    return ((colour.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def _pil_array(im: Image.Image) -> tuple[np.ndarray, list[str], int]:
    """An open PIL image as (grey or BGR(A) array, reasons, EXIF orientation)."""
    im.load()
    orientation = _orientation(im)
    reasons: list[str] = []
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im)
        if mode.startswith("I;16"):
            a = a.astype(np.uint16)
        return _to_uint8(a, reasons), reasons, orientation
    if mode != "L":
        reasons.append(_PIL_MODE_REASON.get(mode, mode.lower()))
    if mode in _ALPHA_MODES or "transparency" in im.info:
        return cv2.cvtColor(np.asarray(im.convert("RGBA")), cv2.COLOR_RGBA2BGRA), reasons, orientation
    if mode in ("L", "1"):
        return np.asarray(im.convert("L")), reasons, orientation
    return cv2.cvtColor(np.asarray(im.convert("RGB")), cv2.COLOR_RGB2BGR), reasons, orientation


def _decode_pil(data: bytes) -> tuple[np.ndarray, list[str], int]:
    """PIL's decode for what OpenCV does not read: (grey or BGR(A) array, reasons, orientation)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return _pil_array(im)
    except BadImage:
        raise
    except Exception as exc:
        raise BadImage(f"corrupt image ({type(exc).__name__}: {exc})") from None


def _decode(data: bytes) -> tuple[np.ndarray, tuple[str, ...]]:
    """Bytes → (uint8 grey (H, W) or BGR (H, W, 3), upright, on white; conversion reasons)."""
    w, h, mode, fmt = _sniff_header(data) or image_size(data)
    if w <= 0 or h <= 0:
        raise BadImage(f"corrupt image (size {w}x{h})")
    if w * h > MAX_IMAGE_PIXELS:
        raise BadImage(
            f"image too large: {w}x{h} = {w * h / 1e6:.0f} megapixels "
            f"(limit {MAX_IMAGE_PIXELS // 1_000_000} megapixels)"
        )
    if fmt == "JPEG" and not _has_jpeg_eoi(data):
        raise BadImage("corrupt image (truncated JPEG: no end-of-image marker)")
    arr: np.ndarray | None = None
    if mode in ("L", "RGB", "RGBA") or mode.startswith("I;16"):
        # IMREAD_UNCHANGED ignores EXIF orientation: it is applied below, the same for both
        # decoders.
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:  # palette, CMYK, exotic modes, or formats cv2 lacks: let PIL convert
        arr, reasons, orientation = _decode_pil(data)
    else:
        reasons = []
        arr = _to_uint8(arr, reasons)
        orientation = 1
        if _may_have_exif(data, fmt):
            try:
                with Image.open(io.BytesIO(data)) as im:
                    orientation = _orientation(im)
            except Exception:
                orientation = 1
        if arr.ndim == 3:
            reasons.append({3: "rgb", 4: "rgba", 2: "alpha"}.get(arr.shape[2], ""))
    return _upright_on_white(arr, reasons, orientation)


def _upright_on_white(arr: np.ndarray, reasons: list[str], orientation: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """uint8 grey/BGR(A) → (grey (H, W) or BGR (H, W, 3), alpha on white, EXIF-upright; reasons)."""
    if arr.ndim == 3:
        ch = arr.shape[2]
        if ch == 1:
            arr = arr[:, :, 0]
        elif ch in (2, 4):
            arr = _on_white(arr[:, :, :-1] if ch == 4 else arr[:, :, 0], arr[:, :, -1])
        elif ch != 3:
            raise BadImage(f"unsupported image with {ch} channels")
    if orientation != 1:
        arr = _ORIENT[orientation](arr)
        reasons.append("exif-orientation")
    return np.ascontiguousarray(arr), tuple(r for r in reasons if r)


def decode_grey(data: bytes) -> tuple[np.ndarray, tuple[str, ...]]:
    """Decode image bytes to an upright 8-bit greyscale array at full resolution.

    Returns (array (H, W) uint8, conversion reasons) where reasons name what had to be
    converted: "rgb", "rgba", "palette", "16-bit", "cmyk", "exif-orientation", ... (empty
    for 8-bit grey). The size is checked from the header first; BadImage on any problem.
    """
    arr, reasons = _decode(data)
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY)
    return arr, reasons


def decode_bgr(data: bytes) -> np.ndarray:
    """The same decode as decode_grey, kept in colour: (H, W, 3) uint8 BGR, for display."""
    arr, _ = _decode(data)
    return cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR) if arr.ndim == 2 else arr


def load_grey(path: Path | str) -> np.ndarray:
    """decode_grey of a file: the image `fer predict` looks for faces in."""
    return decode_grey(read_image_file(path))[0]


def _check_pixels(w: int, h: int) -> None:
    if w <= 0 or h <= 0:
        raise BadImage(f"empty image (size {w}x{h})")
    if w * h > MAX_IMAGE_PIXELS:
        raise BadImage(f"image too large: {w}x{h} = {w * h / 1e6:.0f} megapixels "
                       f"(limit {MAX_IMAGE_PIXELS // 1_000_000} megapixels)")


def pil_to_grey(im: Image.Image) -> np.ndarray:
    """An in-memory PIL image → the grey array decode_grey gives for the same file (same
    mode conversions, transparency on white, EXIF orientation, pixel limit); BadImage."""
    _check_pixels(*im.size)
    try:
        arr, reasons, orientation = _pil_array(im)
    except Exception as exc:
        raise BadImage(f"unreadable PIL image ({type(exc).__name__}: {exc})") from None
    grey, _ = _upright_on_white(arr, reasons, orientation)
    return cv2.cvtColor(grey, cv2.COLOR_BGR2GRAY) if grey.ndim == 3 else grey


def _array_uint8(a: np.ndarray, reasons: list[str]) -> np.ndarray:
    """In-memory pixels → uint8: floats in [0, 1] (skimage, torchvision) × 255, other floats
    and integers up to 255 taken as they are, uint16 and larger integers as for files."""
    if a.dtype == np.uint8 or a.dtype == np.uint16:
        return _to_uint8(a, reasons)
    top = float(a.max()) if a.size else 0.0
    if a.dtype.kind == "f":
        scale = 255.0 if top <= 1.0 else 1.0
        return np.clip(np.rint(a.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    return a.astype(np.uint8) if top <= 255 else _to_uint8(a, reasons)


def array_to_grey(a: np.ndarray, color: str = "rgb") -> np.ndarray:
    """A pixel array → 8-bit grey (H, W), by the decoder's rules: (H, W) grey, (H, W, 1),
    (H, W, 3) or (H, W, 4) in `color` order ("rgb": RGB/RGBA as PIL and most libraries give;
    "bgr": BGR/BGRA as OpenCV gives); 16-bit, 32-bit and float samples scaled as for files,
    alpha on white, then BT.601 grey. BadImage for any other shape or non-finite values."""
    if color not in ("rgb", "bgr"):
        raise BadImage(f"color must be 'rgb' or 'bgr', got {color!r}")
    if not isinstance(a, np.ndarray) or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        shape = getattr(a, "shape", None)
        raise BadImage(f"array of shape {shape}: expected (H, W) grey or (H, W, 3|4) colour pixels")
    _check_pixels(a.shape[1], a.shape[0])
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype.kind not in "uif":
        raise BadImage(f"array of dtype {a.dtype}: expected integer or float pixels")
    elif a.dtype.kind == "f" and not np.isfinite(a).all():
        raise BadImage("array holds NaN or infinite values")
    elif a.dtype.kind == "i" and a.size and int(a.min()) < 0:
        raise BadImage("array holds negative values")
    reasons: list[str] = []
    arr = _array_uint8(a, reasons)
    if arr.ndim == 3 and arr.shape[2] in (3, 4) and color == "rgb":
        arr = arr[:, :, [2, 1, 0, 3][: arr.shape[2]]]  # to BGR(A), the decoder's order
    grey, _ = _upright_on_white(np.ascontiguousarray(arr), reasons, 1)
    return cv2.cvtColor(grey, cv2.COLOR_BGR2GRAY) if grey.ndim == 3 else grey
