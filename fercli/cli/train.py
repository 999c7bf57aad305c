"""`fer train` (`fer evaluate` lives in fercli/cli/evaluate.py)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fercli.cli import options, report
from fercli.cli.app import app
from fercli.errors import FerError
from fercli.train.config import TrainConfig, make_train_config, read_recipe
from fercli.train.launch import env_rank, parse_devices, parse_seeds, torchrun_command


def _parse_fold(fold: Optional[str]) -> Optional[int]:
    if fold is None:
        return None
    if fold == "all":
        return -1
    try:
        return int(fold)
    except ValueError:
        raise FerError(f"--fold {fold!r} must be a fold number or 'all'") from None


# `fer train --help` groups its options in these panels; the rest (recipe, output) lead.
DATA, MODEL, OPTIM, AUGMENT, RUN = "Data", "Model", "Optimizer and schedule", "Augmentation", "Run and hardware"
D = TrainConfig  # every default below is TrainConfig's own


@app.command()
def train(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A recipe: a TOML file of `option = value` lines (as fercli/train/presets/*.toml), or a run's config.json to train its recipe again. Options given on the command line override it; it overrides --preset."),
    preset: options.Preset = None,
    out: Optional[Path] = typer.Option(D.out, "--out", "-o", help="Run directory (several seeds or folds: one directory per run below it). \\[default: runs/<dataset>-<arch>-<optimizer>-<time>]"),
    resume: bool = typer.Option(D.resume, "--resume", help="Continue the run in --out from its last epoch checkpoint. Temp files that a killed run left in it are removed first."),
    force: bool = typer.Option(D.force, "--force", help="Start over in an existing --out."),
    dataset: str = typer.Option(D.dataset, "--dataset", "-d", rich_help_panel=DATA, help="fer2013, ck+, or the path of a `fer prepare` output directory."),
    fold: Optional[str] = typer.Option(None, rich_help_panel=DATA, help="CK+: the subject-independent test fold (default 0), or 'all' to train every fold."),
    train_subset: options.in_panel(options.TrainSubset, DATA) = D.train_subset,
    image_size: options.in_panel(options.ImageSize, DATA) = D.image_size,
    shard_data: bool = typer.Option(D.shard_data, "--shard-data", rich_help_panel=DATA, help="Data parallel: each process holds only its 1/N of the training images (less device memory; each shuffles its own shard, so the data order differs from one process)."),
    model: options.in_panel(options.Arch, MODEL) = D.model,
    shared_backbone: options.in_panel(options.SharedBackbone, MODEL) = D.shared_backbone,
    pretrained: Optional[bool] = typer.Option(D.pretrained, "--pretrained/--no-pretrained", rich_help_panel=MODEL, show_default=False, help="Start from ImageNet ResNet34 weights (paper §2.2): --weights FILE, else torch's hub cache, else a download. Neither flag: ImageNet weights when at hand, else from scratch with one warning (offline); --pretrained (or --preset paper) refuses to train without them; --no-pretrained trains from scratch. config.json records which it was."),
    weights: options.in_panel(options.Weights, MODEL) = D.weights,
    init_from: Optional[str] = typer.Option(D.init_from, "--init-from", rich_help_panel=MODEL, help=f"FER2013-pretrained trunks: start from a from-scratch FER2013 model ({options.MODEL_REFERENCE}, or 'default': the shipped one) with a fresh classifier head; same --arch/--shared-backbone as that model. Implies --no-pretrained."),
    init_head: bool = typer.Option(D.init_head, "--init-head", rich_help_panel=MODEL, help="With --init-from: copy that model's classifier head too, so the run goes on training the whole model on FER2013 (a fine-tune, e.g. at a low --lr with --photometric); needs its --arch, --image-size and --shared-backbone."),
    freeze_backbone: bool = typer.Option(D.freeze_backbone, "--freeze-backbone", rich_help_panel=MODEL, help="Train only the classifier (the paper's literal §2.2 transfer learning)."),
    ema: float = typer.Option(D.ema, rich_help_panel=MODEL, help="Keep an exponential moving average of the weights with this decay (e.g. 0.999); the average is what is validated, selected and saved to best.pt. 0 = off."),
    optimizer: str = typer.Option(D.optimizer, rich_help_panel=OPTIM, help="sgd, adam, adamw, sgd-gc, adam-gc, adamw-gc, or auto (the paper's: adamw-gc on FER2013, adam-gc on CK+)."),
    epochs: int = typer.Option(D.epochs, rich_help_panel=OPTIM, help="Epochs (paper preset: 200)."),
    batch_size: int = typer.Option(D.batch_size, rich_help_panel=OPTIM, help="Batch size (paper preset: 16)."),
    lr: float = typer.Option(D.lr, rich_help_panel=OPTIM, help="Peak learning rate."),
    trunk_lr: float = typer.Option(D.trunk_lr, rich_help_panel=OPTIM, help="The trunks learn at this fraction of --lr, the classifier head at the full --lr (e.g. 0.1 when fine-tuning pretrained trunks under a fresh head, --init-from). 1 = one lr for all."),
    weight_decay: float = typer.Option(D.weight_decay, rich_help_panel=OPTIM, help="Weight decay (decoupled for adamw*, added to the gradient before GC for sgd*/adam*)."),
    schedule: str = typer.Option(D.schedule, rich_help_panel=OPTIM, help="Learning-rate schedule: cosine, constant (paper preset), or onecycle (a half-cosine rise from lr/25 to lr over the first 30% of the epochs, then a half-cosine fall)."),
    warmup_epochs: int = typer.Option(D.warmup_epochs, rich_help_panel=OPTIM, help="Linear learning-rate warm-up over the first N epochs, then --schedule."),
    label_smoothing: float = typer.Option(D.label_smoothing, rich_help_panel=OPTIM, help="Cross-entropy label smoothing in [0, 1)."),
    no_decay_bn_bias: bool = typer.Option(D.no_decay_bn_bias, "--no-decay-bn-bias", rich_help_panel=OPTIM, help="No weight decay on BatchNorm parameters and biases (1-d tensors)."),
    gc_conv_only: bool = typer.Option(D.gc_conv_only, "--gc-conv-only", rich_help_panel=OPTIM, help="Gradient centralization on conv weights only (not FC)."),
    augment: bool = typer.Option(D.augment, "--augment/--no-augment", rich_help_panel=AUGMENT, help="On-device random translate ±10%, horizontal flip, rotation ±10°."),
    scale_aug: float = typer.Option(D.scale_aug, rich_help_panel=AUGMENT, help="Random zoom: each training image is scaled by a factor drawn uniformly in [1-S, 1+S] about its centre, with the shift, rotation and flip (e.g. 0.2). 0 = off."),
    photometric: float = typer.Option(D.photometric, rich_help_panel=AUGMENT, help="Photometric jitter: with this probability each, a training image gets a contrast change (x0.5-1.5), a gamma change (1/1.6-1.6), a Gaussian blur (sigma 0.4-1.4 px) and a JPEG re-compression (quality 10-90), in that order, on the device. 0 = off."),
    random_erasing: float = typer.Option(D.random_erasing, rich_help_panel=AUGMENT, help="Random erasing: with this probability each training image gets a grey rectangle of 2-33% of its area (on the device, inside the train step)."),
    mixup: float = typer.Option(D.mixup, rich_help_panel=AUGMENT, help="Mixup: blend each batch with itself reversed, λ ~ Beta(α, α) per step; this is α (e.g. 0.2). 0 = off."),
    cutmix: float = typer.Option(D.cutmix, rich_help_panel=AUGMENT, help="CutMix: paste a box of the reversed batch into each image, box area (1-λ), λ ~ Beta(α, α) per step; the loss weighs both labels by area. This is α (e.g. 1.0); excludes --mixup. 0 = off."),
    device: options.in_panel(options.Device, RUN) = D.device,
    precision: str = typer.Option(D.precision, rich_help_panel=RUN, help="Training arithmetic: auto (bf16 autocast on CUDA and on CPUs with native bf16, fp32 elsewhere), bf16 or fp32."),
    compile: options.in_panel(options.Compile, RUN) = D.compile,
    cuda_graphs: bool = typer.Option(D.cuda_graphs, "--cuda-graphs/--no-cuda-graphs", rich_help_panel=RUN, help="CUDA: capture the whole train step (augment, forward, backward, GC, AdamW) as one CUDA graph; adam*/adamw* only, sgd* and CPU run eagerly."),
    deterministic: bool = typer.Option(D.deterministic, "--deterministic", rich_help_panel=RUN, help="Deterministic kernels; turns off cudnn.benchmark and TF32. With it, --resume on CUDA reproduces the uninterrupted run bit for bit (same GPU model and torch); without it a resumed CUDA run matches only to float noise (autotuned kernels may differ). CPU runs resume exactly either way."),
    threads: options.in_panel(options.Threads, RUN) = D.threads,
    seed: int = typer.Option(D.seed, rich_help_panel=RUN, help="Seed for init, shuffling and augmentation."),
    checkpoint_every: str = typer.Option(D.checkpoint_every, rich_help_panel=RUN, help="Write last.pt (with optimizer state, for --resume) every N epochs ('5') or once N seconds have passed ('60s'), and after the last epoch; a kill loses at most that much. best.pt (weights only) is written whenever validation improves."),
    keep_last: bool = typer.Option(D.keep_last, "--keep-last/--no-keep-last", rich_help_panel=RUN, help="Once the run has finished, keep last.pt (its optimizer state: what --resume with more --epochs continues from; about 3x best.pt) or remove it, leaving best.pt and the records."),
    seeds: options.in_panel(options.Seeds, RUN) = None,
    jobs: options.in_panel(options.Jobs, RUN) = 1,
    devices: options.in_panel(options.Devices, RUN) = None,
    nproc: Optional[int] = typer.Option(None, rich_help_panel=RUN, help="Data parallel: launch N processes on this machine with torchrun (one GPU each; gloo on CPU). --batch-size stays the global batch and --lr means the same as on one device. Same as `torchrun --nproc_per_node N -m fercli train ...`."),
    nnodes: int = typer.Option(1, rich_help_panel=RUN, help="With --nproc: machines taking part (run the same command on each, with --rdzv-endpoint and its --node-rank)."),
    rdzv_endpoint: Optional[str] = typer.Option(None, rich_help_panel=RUN, help="With --nnodes > 1: HOST:PORT of the rendezvous (c10d), the same on every machine."),
    node_rank: Optional[int] = typer.Option(None, rich_help_panel=RUN, help="With --nnodes > 1: this machine's rank, 0..nnodes-1."),
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
    history.csv, loss_curve.png, last.pt (for --resume), best.pt and train_summary.json (best
    epoch, selection accuracy, speed); at the end the softmax temperature is fitted on the
    selection split and recorded in best.pt and train_summary.json (`fer calibrate` refits it).

    Settings come from, in rising precedence: the defaults shown, --preset, --config, and the
    options given on the command line.
    """
    if nproc is not None:  # before importing torch: this process only launches torchrun
        _launch_torchrun(nproc, nnodes, rdzv_endpoint, node_rank)
        return
    cfg = train_config(ctx)
    if seeds or jobs > 1 or devices:
        _train_jobs(cfg, seeds, jobs, devices, quiet or json_out, json_out)
        return
    _train_in_process(cfg, quiet, json_out)


def train_config(ctx: typer.Context) -> TrainConfig:
    """The one TrainConfig of a `fer train` command line (its parsed Click context): the
    defaults, then --preset, then the --config recipe, then each option given explicitly."""
    explicit = options.given(ctx, TrainConfig)
    old = options.given(ctx).get("old_model")
    explicit["model"] = options.pick("--arch", explicit.get("model"), "--model", old)
    if "fold" in explicit:
        explicit["fold"] = _parse_fold(explicit["fold"])
    config = ctx.params.get("config")
    recipe = read_recipe(config) if config is not None else None
    return make_train_config(ctx.params.get("preset"), recipe=recipe, **explicit)


def _train_in_process(cfg: Any, quiet: bool, json_out: bool) -> None:
    """One run (or one per CK+ fold) in this process, or this rank's share under torchrun."""
    # deferred: fercli.train.runs imports torch (~1.3 s), which predicting and serving never load
    from fercli.train import runs

    main_rank = env_rank() == 0  # under torchrun only rank 0 reports
    disk: list[Any] = []
    with report.TrainProgress(quiet=quiet or json_out or not main_rank) as progress:
        def on_event(kind: str, info: dict[str, Any]) -> None:
            if kind == "disk_estimate":  # the checkpoints' space, before the first epoch
                disk.extend(info["disks"])
                if not progress.quiet:  # also to a log, where no live bars are drawn
                    for line in info["lines"]:
                        report.err_console.print(line, highlight=False, soft_wrap=True)
            progress(kind, info)

        results = runs.train(cfg, on_event=on_event)
    if not main_rank:
        return
    if json_out:
        report.print_json([{"run_dir": str(r.run_dir), "fold": r.fold, "best_epoch": r.best_epoch,
                            "best_val_acc": r.best_val_acc, "val_split": r.val_split,
                            "test_split": r.test_split, "images_per_second": r.images_per_second,
                            "seconds": r.seconds, "device": r.device, "disk_estimate": disk,
                            "history": r.history} for r in results])
        return
    report.print_table(report.train_summary_table(results))
    root = results[0].run_dir.parent if len(results) > 1 else results[0].run_dir
    report.console.print(f"Next: [bold]fer evaluate {root}[/]")


def _launch_torchrun(nproc: int, nnodes: int, rdzv_endpoint: Optional[str], node_rank: Optional[int]) -> None:
    """`fer train --nproc N ...` = `torchrun --nproc_per_node N -m fercli train ...` (without
    the launcher's own flags). torchrun stops every rank when one dies; its exit code is ours."""
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
    # deferred: fercli.train.jobs imports torch (~1.4 s), which predicting and serving never load
    from fercli.train import jobs as scheduler

    def on_event(kind: str, info: dict) -> None:  # type: ignore[type-arg]
        if quiet and kind != "warning":  # warnings go to stderr even with -q
            return
        if kind == "warning":
            options.warn(info["message"])
            return
        if kind == "job_start":
            report.err_console.print(f"start {info['name']} on {info['device']} ({info['mode']}), pid {info['pid']}")
        else:
            report.err_console.print(f"{info['status']:>7} {info['name']}"
                                     + (f": {info['error']}" if info["error"] else ""))

    rep = scheduler.train_many(cfg, seeds=parse_seeds(seeds), jobs=jobs,
                               devices=parse_devices(devices), on_event=on_event)
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
