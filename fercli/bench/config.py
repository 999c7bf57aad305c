"""What `fer bench` is asked to measure: its frozen config, without torch (the CLI reads its
defaults from it before the benchmark, which needs torch, is loaded)."""

from __future__ import annotations

from dataclasses import dataclass

from fercli.vision.faces import FACE_SIZE

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class BenchConfig:
    device: str = "auto"  # auto | cpu | cuda
    model: str = "bcnn-resnet34"
    shared_backbone: bool = False
    image_size: int = FACE_SIZE  # the network input; the default needs no resize
    batch_size: int = 64
    steps: int | None = None  # timed steps per pipeline; None: 10 on CPU, 50 on CUDA
    warmup: int | None = None  # None: 1 on CPU, 10 on CUDA, 15 with --compile
    dataset: str = "fer2013"  # fer2013 | ck+ | a prepared directory
    synthetic: bool = False  # force synthetic data even if the dataset is prepared
    max_images: int = 4096  # distinct training images used (tiled to fill the steps)
    compile: bool = False
    compile_mode: str = "default"
    reference: bool = True
    inference: bool = True
    workers: int | None = None  # reference DataLoader workers; None: 2 on CPU, 8 on CUDA
    inference_batch: int | None = None  # None: 64 on CPU, 256 on CUDA
    threads: int | None = None  # torch.set_num_threads for the run; None: torch's default
    seed: int = 0
    cuda_graphs: bool = True  # CUDA: time the graphed step (fer train's default) AND eager
    time_cap_s: float | None = None  # None: 80 s on CPU (timed steps shrink to fit), none on CUDA
