"""Serving benchmark of `fer serve`: images/s and latency at 1, 8 and 32 concurrent clients.

    .venv/bin/python devtools/benchmarks/bench_serve.py [--seconds 20] [--clients 1 8 32] [--browser 15]
        [--detect-max-side N] [--json out.json]

Two servers, started one after the other with `python -m fercli serve` on a loopback port,
each measured at every concurrency in the same run:
  * batched   - the defaults: 2 detection threads, micro-batched classify (--max-batch 32,
                --max-wait-ms 5: a batch waits only while other requests are detecting);
  * unbatched - the reference: one request at a time, detect then classify on one thread
                (--max-batch 1 --workers-detect 0).
Each client is a thread with a keep-alive HTTP/1.1 connection that posts the three sample
photos in turn (two_faces.jpg has 2 faces, the portraits 1), for --seconds after a warm-up.
Reported: images/s (answers per second), p50/p99 latency, errors (anything but a 200 with
the expected number of faces), the server's mean faces per forward pass, the server's CPU
time per image and cores used (from /proc), and the machine's load average before and after
each row and at the start and end of the run (the machine may be shared: then CPU time per
image is the steadier figure). --detect-max-side N is given to both servers (default: the
server's own).

Profile: the same Recognizer, in this process, one image at a time: how long find_faces
(decode + detect + crop) and classify take per photo, i.e. where a request's CPU time goes.

--browser N: the page's camera loop for N seconds in headless chromium (fake camera playing
a sample portrait) against the batched server; reports the frames/s the page shows.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from serving import SAMPLES, LiveServer, write_y4m  # noqa: E402

PHOTOS = {"two_faces.jpg": 2, "astronaut.jpg": 1, "grace_hopper.jpg": 1}
SERVERS = {
    "batched": ["--max-batch", "32", "--max-wait-ms", "5", "--workers-detect", "2"],
    "unbatched": ["--max-batch", "1", "--workers-detect", "0"],
}


def run_clients(srv: LiveServer, clients: int, seconds: float) -> dict:
    """`clients` threads posting the sample photos for `seconds`; latencies and errors."""
    images = [(n, (SAMPLES / n).read_bytes()) for n in PHOTOS]
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=120)
        i = k
        start.wait()
        while time.monotonic() < stop_at[0]:
            name, data = images[i % len(images)]
            i += 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/predict", body=data, headers={"Content-Type": "image/jpeg"})
                resp = conn.getresponse()
                body = json.loads(resp.read())
                ok = resp.status == 200 and len(body["faces"]) == PHOTOS[name]
                why = "" if ok else f"{resp.status} {str(body)[:120]}"
            except Exception as exc:  # noqa: BLE001 - counted as an error, the run goes on
                ok, why = False, f"{type(exc).__name__}: {exc}"
                conn.close()
                conn = http.client.HTTPConnection(srv.host, srv.port, timeout=120)
            dt = time.perf_counter() - t0
            with lock:
                (lat.append(dt) if ok else errors.append(why))
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    stop_at[0] = t0 + seconds
    start.wait()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0  # includes the answers still in flight at the stop time
    lat_ms = sorted(1000 * x for x in lat)

    def pct(q: float) -> float:
        return round(lat_ms[min(len(lat_ms) - 1, int(q * len(lat_ms)))], 1) if lat_ms else float("nan")

    return {"clients": clients, "answers": len(lat), "errors": len(errors), "error_examples": errors[:3],
            "seconds": round(wall, 2), "images_per_s": round(len(lat) / wall, 2),
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "mean_ms": round(statistics.fmean(lat_ms), 1) if lat_ms else None}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_server(name: str, args: list[str], clients: list[int], seconds: float, log_dir: Path) -> list[dict]:
    srv = LiveServer(log_dir, "--timeout-s", "120", "--log-level", "error", *args)
    rows = []
    try:
        run_clients(srv, max(clients), 3.0)  # warm-up: arenas, thread pools, first batch shapes
        for c in clients:
            before = srv.get("/healthz")[1]["batches"]
            load0 = os.getloadavg()[0]
            cpu0 = cpu_seconds(srv.proc.pid)
            row = run_clients(srv, c, seconds)
            cpu1 = cpu_seconds(srv.proc.pid)
            after = srv.get("/healthz")[1]["batches"]
            # CPU time the server spent per answer: less at the mercy of other load than
            # wall time (the machine may be shared), and what batching can save.
            row["server_cpu_ms_per_image"] = round(1000 * (cpu1 - cpu0) / max(1, row["answers"]), 1)
            row["server_cpu_cores_used"] = round((cpu1 - cpu0) / row["seconds"], 2)
            if before is not None and after is not None and after["batches"] > before["batches"]:
                row["faces_per_forward"] = round((after["faces"] - before["faces"]) / (after["batches"] - before["batches"]), 2)
            row.update(server=name, load_before=round(load0, 2), load_after=round(os.getloadavg()[0], 2))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        srv.stop()
    return rows


def profile(repeats: int, detect_max_side: int | None = None) -> dict:
    """Per photo, one at a time in this process: find_faces and classify medians (ms)."""
    import numpy as np

    import fercli

    rec = fercli.Recognizer(detect_max_side=detect_max_side)
    out = {}
    for name in PHOTOS:
        data = (SAMPLES / name).read_bytes()
        rec.predict(data)
        find, cls = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            found = rec.find_faces(data)
            t1 = time.perf_counter()
            rec.classify(np.stack([c for _, c in found]))
            cls.append(1000 * (time.perf_counter() - t1))
            find.append(1000 * (t1 - t0))
        out[name] = {"find_faces_ms": round(statistics.median(find), 1),
                     "classify_ms": round(statistics.median(cls), 1), "faces": len(found)}
    return out


def browser_fps(seconds: float, log_dir: Path) -> dict:
    """The page's camera loop in headless chromium for `seconds`: the frames/s it shows."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    video = write_y4m(SAMPLES / "grace_hopper.jpg", log_dir / "portrait.y4m")
    srv = LiveServer(log_dir, "--timeout-s", "60", "--log-level", "error")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                 f"--use-file-for-fake-video-capture={video}", f"--user-data-dir={log_dir / 'profile'}"):
        opts.add_argument(flag)
    os.environ.setdefault("SE_OFFLINE", "true")
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        driver.get(srv.url + "/")
        h0 = srv.get("/healthz")[1]["requests"].get("200", 0)
        driver.find_element(By.ID, "camera-btn").click()
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "live-label").text)
        t0 = time.monotonic()
        n0 = srv.get("/healthz")[1]["requests"].get("200", 0)
        samples = []
        while time.monotonic() - t0 < seconds:
            time.sleep(1.0)
            samples.append(float(driver.find_element(By.ID, "fps").get_attribute("data-fps") or 0))
        n1 = srv.get("/healthz")[1]["requests"].get("200", 0)
        wall = time.monotonic() - t0
    finally:
        driver.quit()
        srv.stop()
    return {"seconds": round(wall, 1), "frames_answered": n1 - n0, "frames_per_s": round((n1 - n0) / wall, 2),
            "page_fps_median": round(statistics.median(samples), 2) if samples else None,
            "requests_before_camera": h0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--profile-repeats", type=int, default=20)
    ap.add_argument("--browser", type=float, default=0.0, help="seconds of the page's camera loop (0: skip)")
    ap.add_argument("--detect-max-side", type=int, default=None, help="passed to both servers")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    extra = [] if args.detect_max_side is None else ["--detect-max-side", str(args.detect_max_side)]

    import torch

    result: dict = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "command": "python devtools/benchmarks/bench_serve.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version()},
        "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
        "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        for name, flags in SERVERS.items():
            result["rows"] += bench_server(name, flags + extra, args.clients, args.seconds, Path(tmp))
        result["profile"] = profile(args.profile_repeats, args.detect_max_side)
        if args.browser > 0:
            result["browser_camera"] = browser_fps(args.browser, Path(tmp))
    result["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    by = {(r["server"], r["clients"]): r for r in result["rows"]}
    result["speedup_images_per_s"] = {
        c: round(by[("batched", c)]["images_per_s"] / by[("unbatched", c)]["images_per_s"], 2)
        for c in args.clients if by[("unbatched", c)]["images_per_s"] > 0}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
