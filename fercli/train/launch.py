"""How runs are launched, without torch: the torchrun command line behind `fer train --nproc N`,
the rank a process was given, and the --seeds / --devices lists of concurrent runs. Kept apart
from fercli.train.distributed and fercli.train.jobs, which import torch: the launcher process
only builds this list and waits for torchrun (importing torch there cost every `fer train
--nproc` launch ~4 s of CPU on a 2-core machine), and the CLI parses its flags before loading it."""

from __future__ import annotations

import os
import sys

from fercli.errors import FerError


def torchrun_command(nproc: int, argv: list[str], *, nnodes: int = 1, rdzv_endpoint: str | None = None,
                     node_rank: int | None = None) -> list[str]:
    """`python -m torch.distributed.run ... -m fercli <argv>` for `fer train --nproc N`.

    Single node: --standalone (a local rendezvous on a free port). Several nodes: the same
    command on every node with --nnodes and one --rdzv-endpoint HOST:PORT (c10d rendezvous).
    """
    if nproc < 1:
        raise FerError(f"--nproc must be ≥ 1, got {nproc}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    if nnodes > 1:
        if not rdzv_endpoint:
            raise FerError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node)")
        cmd += ["--nnodes", str(nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint]
        if node_rank is not None:
            cmd += ["--node-rank", str(node_rank)]
    else:
        cmd += ["--standalone"]
    return [*cmd, "-m", "fercli", *argv]

def env_rank() -> int:
    """RANK as torchrun sets it (0 when not launched by torchrun)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0

def parse_devices(text: str | None) -> tuple[str, ...] | None:
    """--devices "cuda:0,cuda:1" (or "cpu", "cuda") → a tuple; None when not given."""
    if not text:
        return None
    devs = tuple(d.strip() for d in text.split(",") if d.strip())
    for d in devs:
        if not (d in ("cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit())):
            raise FerError(f"--devices: {d!r} is not cpu, cuda or cuda:N")
    if not devs:
        raise FerError("--devices is empty")
    return devs

def parse_seeds(text: str | None) -> tuple[int, ...] | None:
    """--seeds "0,1,2" -> (0, 1, 2) (`fer train`, `fer ablate`); None when the option is not given."""
    if text is None:
        return None
    try:
        seeds = tuple(int(s) for s in text.replace(" ", "").split(",") if s)
    except ValueError:
        raise FerError(f"--seeds {text!r} must be comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise FerError("--seeds needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise FerError(f"--seeds {text!r} repeats a seed")
    return seeds


def parse_folds(text: str | None) -> tuple[int, ...] | None:
    """--folds "3-9" or "0,2,5" -> (3, ..., 9) / (0, 2, 5) (`fer ablate`), sorted; None when the
    option is not given. Whether each id exists is the dataset's question (fercli.ablation)."""
    if text is None:
        return None
    folds: list[int] = []
    try:
        for part in text.replace(" ", "").split(","):
            if not part:
                continue
            lo, _, hi = part.partition("-")
            first, last = int(lo), int(hi) if hi else int(lo)
            if last < first:
                raise ValueError
            folds += range(first, last + 1)
    except ValueError:
        raise FerError(f"--folds {text!r} must be fold ids or ranges, e.g. 3-9 or 0,2,5") from None
    if not folds:
        raise FerError("--folds needs at least one fold id")
    if len(set(folds)) != len(folds):
        raise FerError(f"--folds {text!r} names a fold twice")
    return tuple(sorted(folds))
