"""The torchrun command line behind `fer train --nproc N`. Kept apart from fercli.train.distributed,
which imports torch: the launcher process only builds this list and waits for torchrun, and
importing torch there cost every `fer train --nproc` launch ~4 s of CPU on a 2-core machine."""

from __future__ import annotations

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
