"""Data parallel training under torchrun: process group, per-rank batch slices, reductions.

`fer train` runs unchanged under `torchrun --nproc_per_node N -m fercli train ...` (or
`fer train --nproc N`, which launches torchrun itself). Each rank:

    holds the device-resident dataset (all of it)
    draws the SAME global per-epoch permutation and augmentation draws (same seed)
      → global batch g = batches[s]  (B,)  →  rank r trains rows g[r*b:(r+1)*b], b = B / W
    trains a DistributedDataParallel model: DDP averages the gradients of the W equal slices,
      which is the gradient of the global batch's mean loss; GC (eq. 8–9) then centralizes
      that averaged gradient inside optimizer.step, exactly as on one device
    all-reduces its loss/accuracy sums, so every rank sees the global epoch metrics

So `--batch-size` stays the global batch and `--lr` means what it means on one device; the
number of optimizer steps per epoch and the order of the data are those of one process.
What differs: BatchNorm normalises each rank's slice with that slice's statistics (b images,
not B) unless `--sync-bn` (CUDA only: torch's SyncBatchNorm has no CPU kernel), and floating
point sums run in another order. tests/test_distributed.py measures the agreement.

Only rank 0 writes (history, checkpoints, plots, config.json). Collectives time out
(`FER_DIST_TIMEOUT_S`, default 300 s) so a dead rank fails the job instead of hanging it;
torchrun then stops the other ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from fercli.errors import FerError
from fercli.train.launch import env_rank, torchrun_command  # noqa: F401  (re-exported: part of this module's API)

if TYPE_CHECKING:
    import numpy as np

DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank r of world_size W (W = 1: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    sharded: bool = False  # --shard-data: each rank holds only its 1/W of the training rows

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise FerError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None




def setup(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, ...).

    NCCL on CUDA, gloo on CPU. Returns SINGLE when not launched by torchrun.
    """
    world = env_world_size()
    if world == 1:
        return SINGLE
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if not dist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get("FER_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S)))
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=timeout)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def current() -> DistInfo:
    """This process's place in an initialised group (SINGLE when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")), backend=str(dist.get_backend()))


def shard_rows(rows: "np.ndarray", info: DistInfo) -> "np.ndarray":
    """--shard-data: rank r keeps rows r, r+W, r+2W, ... (each holds 1/W of the data on its
    device). Each rank then shuffles its own shard, so the data order differs from one process."""
    return rows[info.rank::info.world_size] if info.enabled else rows


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(info: DistInfo, device: torch.device) -> torch.device:
    """One GPU per process: rank's LOCAL_RANK picks the card; CPU ranks share the CPU."""
    if info.enabled and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def local_batch(global_batch: int, info: DistInfo) -> int:
    """b = B / W images per rank per step; B must divide evenly so that DDP's gradient mean
    equals the global batch's."""
    if global_batch % info.world_size:
        raise FerError(f"--batch-size {global_batch} is the global batch and must divide evenly across "
                       f"{info.world_size} processes")
    return global_batch // info.world_size


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over ranks, in place (the epoch's loss and accuracy sums: once per epoch)."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
