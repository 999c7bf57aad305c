"""`fer train` (`fer evaluate` lives in fercli/cli/evaluate.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fercli.cli import options
from fercli.cli.app import app
from fercli.errors import FerError


def _parse_fold(fold: Optional[str]) -> Optional[int]:
    if fold is None:
        return None
    if fold == "all":
        return -1
    try:
        return int(fold)
    except ValueError:
        raise FerError(f"--fold {fold!r} must be a fold number or 'all'") from None


@app.command()
def train(
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d",
                                          help="fer2013, ck+, or the path of a `fer prepare` output directory. \\[default: fer2013; ckplus-transfer preset: ck+]"),
    model: options.Arch = None,
    optimizer: Optional[str] = typer.Option(None, help="sgd, adam, adamw, sgd-gc, adam-gc, adamw-gc, or auto (the paper's: adamw-gc on FER2013, adam-gc on CK+). \\[default: auto]"),
    epochs: Optional[int] = typer.Option(None, help="Epochs. \\[default: 30; paper preset: 200]"),
    batch_size: Optional[int] = typer.Option(None, help="Batch size. \\[default: 64; paper preset: 16]"),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate. \\[default: 1e-4]"),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay (decoupled for adamw*, added to the gradient before GC for sgd*/adam*). \\[default: 1e-4]"),
    schedule: Optional[str] = typer.Option(None, help="Learning-rate schedule: cosine, constant, or onecycle (a half-cosine rise from lr/25 to lr over the first 30% of the epochs, then a half-cosine fall). \\[default: cosine; paper preset: constant]"),
    image_size: options.ImageSize = None,
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained", help="Start from ImageNet ResNet34 weights (paper §2.2). \\[default: pretrained]"),
    weights: options.Weights = None,
    init_from: Optional[str] = typer.Option(None, "--init-from", help=f"FER2013-pretrained trunks: start from a from-scratch FER2013 model ({options.MODEL_REFERENCE}, or 'default': the shipped one) with a fresh classifier head; same --arch/--shared-backbone as that model. Implies --no-pretrained."),
    label_smoothing: Optional[float] = typer.Option(None, help="Cross-entropy label smoothing in [0, 1). \\[default: 0]"),
    warmup_epochs: Optional[int] = typer.Option(None, help="Linear learning-rate warm-up over the first N epochs, then --schedule. \\[default: 0]"),
    random_erasing: Optional[float] = typer.Option(None, help="Random erasing: with this probability each training image gets a grey rectangle of 2-33% of its area (on the device, inside the train step). \\[default: 0]"),
    mixup: Optional[float] = typer.Option(None, help="Mixup: blend each batch with itself reversed, λ ~ Beta(α, α) per step; this is α (e.g. 0.2). \\[default: 0 = off]"),
    scale_aug: Optional[float] = typer.Option(None, help="Random zoom: each training image is scaled by a factor drawn uniformly in [1-S, 1+S] about its centre, with the shift, rotation and flip (e.g. 0.2). \\[default: 0 = off]"),
    cutmix: Optional[float] = typer.Option(None, help="CutMix: paste a box of the reversed batch into each image, box area (1-λ), λ ~ Beta(α, α) per step; the loss weighs both labels by area. This is α (e.g. 1.0); excludes --mixup. \\[default: 0 = off]"),
    ema: Optional[float] = typer.Option(None, help="Keep an exponential moving average of the weights with this decay (e.g. 0.999); the average is what is validated, selected and saved to best.pt. \\[default: 0 = off]"),
    no_decay_bn_bias: Optional[bool] = typer.Option(None, "--no-decay-bn-bias", help="No weight decay on BatchNorm parameters and biases (1-d tensors)."),
    shared_backbone: options.SharedBackbone = None,
    freeze_backbone: Optional[bool] = typer.Option(None, "--freeze-backbone", help="Train only the classifier (the paper's literal §2.2 transfer learning)."),
    gc_conv_only: Optional[bool] = typer.Option(None, "--gc-conv-only", help="Gradient centralization on conv weights only (not FC)."),
    device: options.Device = "auto",
    precision: Optional[str] = typer.Option(None, help="Training arithmetic: auto (bf16 autocast on CUDA and on CPUs with native bf16, fp32 elsewhere), bf16 or fp32. \\[default: auto]"),
    compile: options.Compile = None,
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="On-device random translate ±10%, horizontal flip, rotation ±10°. \\[default: on]"),
    seed: Optional[int] = typer.Option(None, help="Seed for init, shuffling and augmentation. \\[default: 0]"),
    fold: Optional[str] = typer.Option(None, help="CK+: the subject-independent test fold (default 0), or 'all' to train every fold."),
    train_subset: options.TrainSubset = None,
    threads: options.Threads = None,
    cuda_graphs: Optional[bool] = typer.Option(None, "--cuda-graphs/--no-cuda-graphs", help="CUDA: capture the whole train step (augment, forward, backward, GC, AdamW) as one CUDA graph; adam*/adamw* only, sgd* and CPU run eagerly. \\[default: on]"),
    deterministic: Optional[bool] = typer.Option(None, "--deterministic", help="Deterministic kernels; turns off cudnn.benchmark and TF32. With it, --resume on CUDA reproduces the uninterrupted run bit for bit (same GPU model and torch); without it a resumed CUDA run matches only to float noise (autotuned kernels may differ). CPU runs resume exactly either way."),
    checkpoint_every: Optional[str] = typer.Option(None, help="Write last.pt (with optimizer state, for --resume) every N epochs ('5') or once N seconds have passed ('60s'), and after the last epoch; a kill loses at most that much. best.pt (weights only) is written whenever validation improves. \\[default: 60s]"),
    seeds: options.Seeds = None,
    jobs: options.Jobs = 1,
    devices: options.Devices = None,
    nproc: Optional[int] = typer.Option(None, help="Data parallel: launch N processes on this machine with torchrun (one GPU each; gloo on CPU). --batch-size stays the global batch and --lr means the same as on one device. Same as `torchrun --nproc_per_node N -m fercli train ...`."),
    nnodes: int = typer.Option(1, help="With --nproc: machines taking part (run the same command on each, with --rdzv-endpoint and its --node-rank)."),
    rdzv_endpoint: Optional[str] = typer.Option(None, help="With --nnodes > 1: HOST:PORT of the rendezvous (c10d), the same on every machine."),
    node_rank: Optional[int] = typer.Option(None, help="With --nnodes > 1: this machine's rank, 0..nnodes-1."),
    shard_data: Optional[bool] = typer.Option(None, "--shard-data", help="Data parallel: each process holds only its 1/N of the training images (less device memory; each shuffles its own shard, so the data order differs from one process)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (several seeds or folds: one directory per run below it). \\[default: runs/<dataset>-<arch>-<optimizer>-<time>]"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last epoch checkpoint. Temp files that a killed run left in it are removed first."),
    force: bool = typer.Option(False, "--force", help="Start over in an existing --out."),
    preset: options.Preset = None,
    old_model: Annotated[Optional[str], typer.Option(
        "--model", hidden=True, callback=options.deprecated_alias(
            "--model", "--arch", "in `fer train` it names an architecture; --model names a trained model"))] = None,
    quiet: options.Quiet = False,
    json_out: options.JsonOut = False,
) -> None:
    """Train a model on a prepared dataset; the best checkpoint is selected on validation data only.

    FER2013: train on Training, select on PublicTest, report PrivateTest (`fer evaluate`).
    CK+: test on one subject-independent fold, select on the next fold, train on the rest.
    Each run directory holds config.json (config, dataset sha256, git commit, device, seed),
    history.csv, loss_curve.png, last.pt (for --resume) and best.pt.
    """
    params = dict(locals())
    if nproc is not None:  # before importing torch: this process only launches torchrun
        _launch_torchrun(nproc, nnodes, rdzv_endpoint, node_rank)
        return
    cfg = train_config(params)
    if seeds or jobs > 1 or devices:
        _train_jobs(cfg, seeds, jobs, devices, quiet or json_out, json_out)
        return
    _train_in_process(cfg, quiet, json_out)


def _train_in_process(cfg: Any, quiet: bool, json_out: bool) -> None:
    """One run (or one per CK+ fold) in this process, or this rank's share under torchrun."""
    from fercli.cli import report
    from fercli.train import distributed, runs

    main_rank = distributed.env_rank() == 0  # under torchrun only rank 0 reports
    with report.TrainProgress(quiet=quiet or json_out or not main_rank) as progress:
        results = runs.train(cfg, on_event=progress)
    if not main_rank:
        return
    if json_out:
        report.print_json([{"run_dir": str(r.run_dir), "fold": r.fold, "best_epoch": r.best_epoch,
                            "best_val_acc": r.best_val_acc, "val_split": r.val_split,
                            "test_split": r.test_split, "images_per_second": r.images_per_second,
                            "seconds": r.seconds, "device": r.device, "history": r.history} for r in results])
        return
    report.print_table(report.train_summary_table(results))
    root = results[0].run_dir.parent if len(results) > 1 else results[0].run_dir
    report.console.print(f"Next: [bold]fer evaluate {root}[/]")


def train_config(params: dict[str, Any]) -> Any:
    """The TrainConfig of `fer train` from its parsed parameters (the command's locals(), or a
    Click context's `params`): the preset, then every option given, named as the config's fields."""
    from fercli.train import config

    model = options.pick("--arch", params.get("model"), "--model", params.get("old_model"))
    return config.make_train_config(params.get("preset"), **options.config_values(
        config.TrainConfig, params, model=model, fold=_parse_fold(params.get("fold"))))


def _launch_torchrun(nproc: int, nnodes: int, rdzv_endpoint: Optional[str], node_rank: Optional[int]) -> None:
    """`fer train --nproc N ...` = `torchrun --nproc_per_node N -m fercli train ...` (without
    the launcher's own flags). torchrun stops every rank when one dies; its exit code is ours."""
    import subprocess
    import sys

    from fercli.train.launch import torchrun_command

    if "train" not in sys.argv:
        raise FerError("--nproc relaunches this command line; call it as `fer train ... --nproc N`")
    launcher = {"--nproc", "--nnodes", "--rdzv-endpoint", "--node-rank"}
    argv, skip = ["train"], False
    for a in sys.argv[sys.argv.index("train") + 1:]:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in launcher:
            skip = "=" not in a
            continue
        argv.append(a)
    cmd = torchrun_command(nproc, argv, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint, node_rank=node_rank)
    rc = subprocess.call(cmd)
    if rc != 0:
        raise FerError(f"data-parallel training failed (torchrun exit {rc}): a rank died or refused the run; "
                       f"its message is above. Rerun with --resume to continue from the last checkpoint")


def _train_jobs(cfg, seeds: Optional[str], jobs: int, devices: Optional[str], quiet: bool,  # type: ignore[no-untyped-def]
                json_out: bool) -> None:
    """--seeds / --jobs / --devices: whole runs as concurrent processes (fercli.train.jobs)."""
    import dataclasses

    from fercli.cli import report
    from fercli.train import jobs as scheduler

    def on_event(kind: str, info: dict) -> None:  # type: ignore[type-arg]
        if quiet:
            return
        if kind == "job_start":
            report.err_console.print(f"start {info['name']} on {info['device']} ({info['mode']}), pid {info['pid']}")
        else:
            report.err_console.print(f"{info['status']:>7} {info['name']}"
                                     + (f": {info['error']}" if info["error"] else ""))

    rep = scheduler.train_many(cfg, seeds=scheduler.parse_seeds(seeds), jobs=jobs,
                               devices=scheduler.parse_devices(devices), on_event=on_event)
    rep["results"] = [dataclasses.asdict(r) for r in rep["results"]]
    if json_out:
        report.print_json(rep)
    else:
        report.console.print(f"{len(rep['results'])} runs under {rep['root']}: {rep['images']:,} images in "
                             f"{rep['seconds']:.1f} s, aggregate {rep['img_per_s']:,.1f} img/s")
    if rep["failed"]:
        report.err_console.print(f"error: {rep['failed']} of {len(rep['results'])} runs failed; "
                                 f"their logs are <run dir>.log beside each run")
        raise typer.Exit(1)
