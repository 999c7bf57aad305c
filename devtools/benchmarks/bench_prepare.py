"""Time `fer prepare fer2013` on the real FER2013 image folders, a zip of them and the CSV.

    .venv/bin/python devtools/benchmarks/bench_prepare.py [--folders DIR] [--repeat 3] [--only folder,zip,csv]

The zip and CSV are built once from the folders into the test cache (~/.cache/fercli-tests or
$FER_TEST_CACHE; the same files the realdata tests use). Prints one JSON object: the machine,
the date and, per input, every run's wall seconds, the best, and CPU seconds. Record results in
docs/benchmarks.md. Each run is in-process, with the files in the page cache (a second
`fer prepare` of the same data, the common case), writing to a fresh temporary directory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

CACHE = Path(os.environ.get("FER_TEST_CACHE", Path.home() / ".cache" / "fercli-tests"))
SHARED = Path(os.environ.get("FER_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
CACHE_VERSION = "v1"


def find_folders(arg: str | None) -> Path:
    cands = [Path(arg)] if arg else [
        CACHE / "fer2013-unpacked", CACHE / "fer2013-unpacked" / "fer2013",
        Path("/tmp/fercache/fer2013-unpacked"),
    ]
    for c in cands:
        if (c / "train").is_dir() and (c / "test").is_dir():
            return c
    pack, tool = SHARED / "fer2013.jpegpack", SHARED.parent / "tools" / "jpegpack.py"
    if arg is None and pack.is_file() and tool.is_file():
        dest = CACHE / "fer2013-unpacked"
        tmp = CACHE / f"fer2013-unpacking-{os.getpid()}"
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(tool), "unpack", str(pack), str(tmp)], check=True)
        tmp.rename(dest)
        (CACHE / "fer2013-unpacked.ok").write_text("ok\n")
        return find_folders(str(dest / "fer2013")) if (dest / "fer2013").is_dir() else dest
    sys.exit(f"FER2013 image folders not found (tried {', '.join(map(str, cands))}); pass --folders")


def build_zip(folders: Path) -> Path:
    dest = CACHE / f"fer2013-folders-{CACHE_VERSION}.zip"
    if not dest.exists():
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for split in ("train", "test"):
                for p in sorted((folders / split).rglob("*")):
                    if p.is_file():
                        zf.write(p, p.relative_to(folders).as_posix())
        os.replace(tmp, dest)
    return dest


def build_csv(folders: Path) -> Path:
    from fercli.data.ingest import prepare_fer2013
    from fercli.data.prepared import load_prepared

    dest = CACHE / f"fer2013-{CACHE_VERSION}" / "fer2013.csv"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        usage = {"train": "Training", "public_test": "PublicTest", "private_test": "PrivateTest"}
        with tempfile.TemporaryDirectory() as td:
            ds = load_prepared(prepare_fer2013(folders, out=Path(td) / "p").out)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            with open(tmp, "w") as fh:
                fh.write("emotion,pixels,Usage\n")
                for img, lab, s in zip(ds.images, ds.labels, ds.split, strict=True):
                    fh.write(f"{int(lab)},{' '.join(map(str, img.ravel().tolist()))},{usage[str(s)]}\n")
        os.replace(tmp, dest)
    return dest


def machine() -> dict:
    import cv2
    import numpy as np
    import PIL

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "pillow": PIL.__version__,
        "platform": platform.platform(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folders", help="FER2013 folder with train/ and test/")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--only", default="folder,zip,csv")
    args = ap.parse_args()

    from fercli.data.ingest import prepare_fer2013

    folders = find_folders(args.folders)
    inputs = {"folder": folders}
    wanted = args.only.split(",")
    if "zip" in wanted:
        inputs["zip"] = build_zip(folders)
    if "csv" in wanted:
        inputs["csv"] = build_csv(folders)
    results: dict = {}
    for name in wanted:
        src = inputs[name]
        times, cpu = [], []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as td:
                t0, c0 = time.perf_counter(), time.process_time()
                r = prepare_fer2013(src, out=Path(td) / "out")
                times.append(round(time.perf_counter() - t0, 3))
                cpu.append(round(time.process_time() - c0, 3))
        dup = r.manifest["duplicates"]
        results[name] = {
            "src": str(src), "images": r.num_images, "seconds": times, "best_s": min(times),
            "cpu_seconds": cpu,  # user+sys of all threads: less sensitive to a busy machine
            "duplicates": {k: dup[k] for k in ("count", "extra_copies", "cross_split", "label_conflicts")},
        }
    print(json.dumps({
        "bench": "prepare_fer2013",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
