"""`fer serve` (the real CLI, app and uvicorn) with the model's classify held behind two gate
files, for tests/test_serve_ops.py: the first call (the warm-up pass) waits until argv[1]
exists, every later one until argv[2] exists. Usage: serve_gated.py WARM WORK serve ARGS..."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import fercli.serve.app as serve_app
from fercli.cli import main

warm_gate, work_gate = Path(sys.argv[1]), Path(sys.argv[2])
load = serve_app._load_recognizer


def gated_load(cfg):  # type: ignore[no-untyped-def]
    rec = load(cfg)
    classify, calls = rec.classify, []

    def gated(crops, **kw):  # type: ignore[no-untyped-def]
        gate = work_gate if calls else warm_gate
        calls.append(len(crops))
        while not gate.exists():
            time.sleep(0.02)
        return classify(crops, **kw)

    rec.classify = gated
    return rec


serve_app._load_recognizer = gated_load
sys.argv = ["fer", *sys.argv[3:]]
main()
