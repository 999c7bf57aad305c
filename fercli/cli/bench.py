"""`fer bench`: training throughput of the engine vs a reference pipeline vs the hardware."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from fercli.bench.config import COMPILE_MODES, BenchConfig
from fercli.bench.scaling import ScalingConfig, run_scaling
from fercli.cli import options, report
from fercli.cli.app import app

B = BenchConfig  # every default below is BenchConfig's own


@app.command()
def bench(
    ctx: typer.Context,
    device: options.Device = B.device,
    model: options.Arch = B.model,
    shared_backbone: options.SharedBackbone = B.shared_backbone,
    image_size: options.ImageSize = B.image_size,
    batch_size: int = typer.Option(B.batch_size, help="Training batch size of both pipelines."),
    steps: Optional[int] = typer.Option(B.steps, help="Timed steps per pipeline. \\[default: 10 on CPU, 50 on CUDA]"),
    warmup: Optional[int] = typer.Option(B.warmup, help="Untimed warm-up steps first. \\[default: 1 on CPU, 10 on CUDA, 15 with --compile]"),
    dataset: str = typer.Option(B.dataset, "--dataset", "-d", help="fer2013, ck+ or a prepared directory; an unprepared name falls back to synthetic data (reported as data: synthetic)."),
    synthetic: bool = typer.Option(B.synthetic, "--synthetic", help="Use random synthetic faces even if the dataset is prepared."),
    compile: options.Compile = B.compile,
    compile_mode: str = typer.Option(B.compile_mode, help=f"torch.compile mode with --compile: {', '.join(COMPILE_MODES)} (default = fer train --compile; reduce-overhead adds CUDA graphs)."),
    reference: bool = typer.Option(B.reference, "--reference/--no-reference", help="Also measure the reference DataLoader pipeline."),
    inference: bool = typer.Option(B.inference, "--inference/--no-inference", help="Also time inference (batch 1 and batched)."),
    workers: Optional[int] = typer.Option(B.workers, help="Reference DataLoader workers. \\[default: 2 on CPU, 8 on CUDA]"),
    inference_batch: Optional[int] = typer.Option(B.inference_batch, help="Batch of the batched inference timing. \\[default: 64 on CPU, 256 on CUDA]"),
    threads: options.Threads = B.threads,
    cuda_graphs: bool = typer.Option(B.cuda_graphs, "--cuda-graphs/--no-cuda-graphs", help="CUDA: time the engine's graph-captured step (fer train's default) and, in the same run, the eager step; --no-cuda-graphs times eager only."),
    time_cap: Optional[float] = typer.Option(B.time_cap_s, help="Seconds the timed steps may take in all; fewer timed steps when slow. \\[default: 80 on CPU, none on CUDA]"),
    nproc: Optional[int] = typer.Option(None, help="Instead: data-parallel scaling of `fer train` (synthetic faces): N processes via torchrun against 1 process, in one run; reports scaling efficiency = N-process img/s / (N x 1-process img/s). Each process uses --threads threads (default 1 here)."),
    old_model: Annotated[Optional[str], typer.Option(
        "--model", hidden=True, callback=options.deprecated_alias(
            "--model", "--arch", "in `fer bench` it names an architecture; --model names a trained model"))] = None,
    json_out: options.JsonOut = False,
) -> None:
    """Steady-state training img/s of the project's engine (device-resident data, on-device augmentation, bf16 autocast, channels_last, foreach GC) against the usual DataLoader + torchvision transforms + fp32 eager loop, same model and device; plus FLOPs per image, achieved TFLOP/s against a measured bf16 matmul rate, and inference latency.

    --compile compiles the engine's step only; the reference pipeline stays eager."""
    if old_model is not None:  # the old spelling: it names the architecture
        model = options.pick("--arch", options.given(ctx).get("model"), "--model", old_model)
    if nproc is not None:
        _scaling(nproc, device, model, batch_size, threads, json_out)
        return
    cfg = BenchConfig(device=device, model=model, shared_backbone=shared_backbone, image_size=image_size,
                      batch_size=batch_size, steps=steps, warmup=warmup, dataset=dataset, synthetic=synthetic,
                      compile=compile, compile_mode=compile_mode, reference=reference, inference=inference,
                      workers=workers, inference_batch=inference_batch, threads=threads,
                      cuda_graphs=cuda_graphs, time_cap_s=time_cap)
    # deferred: the benchmark imports torch (~1.3 s), which predicting and serving never load
    from fercli.bench.engine_bench import run_bench

    status = report.err_console.status("benchmarking…")
    status.start()

    def on_event(kind: str, info: dict[str, Any]) -> None:
        if kind == "phase":
            status.update(f"[bold]{info['name']}[/]…")
        elif kind == "result":
            report.err_console.print(f"  {info['name']}: {info['img_per_s']:,.1f} img/s")

    try:
        result = run_bench(cfg, on_event=on_event)
    finally:
        status.stop()
    if json_out:
        report.print_json(result)
        return
    report.print_table(_table(result))
    for note in result["notes"]:
        report.console.print(f"[yellow]note:[/] {note}")


def _fmt(v: Any, spec: str = ",.1f") -> str:
    return "—" if v is None else format(v, spec)


def _table(r: dict[str, Any]) -> Any:
    shared = " (shared backbone)" if r["shared_backbone"] else ""
    t = Table(title=f"fer bench: {r['model']}{shared}, {r['image_size']} px, batch {r['batch_size']}, "
                    f"{r['steps']} timed steps on {r['device']} — data: {r['data']}")
    t.add_column("pipeline")
    t.add_column("train img/s", justify="right")
    t.add_column("TFLOP/s", justify="right")
    t.add_column(f"of {r['peak_dtype']} matmul", justify="right")
    t.add_column("how")
    eng = r["engine"]
    how = f"{eng['precision']}, channels_last, on-device data + aug, flat GC"
    if eng.get("cuda_graphs"):
        how += ", CUDA graph"
    if eng["compile"]:
        how += f", torch.compile ({eng['compile']})"
    t.add_row("engine", _fmt(r["engine_img_per_s"]), _fmt(r["engine_tflops"], ".3f"),
              f"{100 * r['fraction_of_peak']:.1f}%", how)
    if r.get("engine_eager_img_per_s"):
        t.add_row("engine, eager", _fmt(r["engine_eager_img_per_s"]), "", "",
                  f"same step without the graph (graph: {_fmt(r['graph_speedup'], '.2f')}×)")
    if r["reference"] is not None:
        frac = r["reference_fraction_of_peak"]
        t.add_row("reference", _fmt(r["reference_img_per_s"]), _fmt(r["reference_tflops"], ".3f"),
                  "—" if frac is None else f"{100 * frac:.1f}%",
                  f"DataLoader({r['reference']['workers']} workers) + transforms.v2, fp32, "
                  "loop GC, .item()")
    t.add_section()
    t.add_row("speedup", f"[bold]{_fmt(r['speedup'], '.2f')}×[/]", "", "", "engine / reference")
    t.add_row("FLOPs / image", f"{r['flops_per_image'] / 1e9:.2f} G", "", "", "fwd+bwd")
    mm = r["matmul_tflops"]
    isa = f"; CPU ISA {r['cpu_isa']}" if r.get("cpu_isa") else ""
    t.add_row("matmul peak", "", ", ".join(f"{v:.3g} {k}" for k, v in mm.items()), "", f"measured in this run{isa}")
    t.add_row("inference", f"{_fmt(r['inference_ms_per_face_batch1'], '.2f')} ms/face", "", "",
              f"batch 1; {_fmt(r['inference_img_per_s_batched'])} img/s at {r['inference_batch']}")
    return t


def _scaling(nproc: int, device: str, model: str, batch_size: int, threads: Optional[int], json_out: bool) -> None:
    cfg = ScalingConfig(nproc=nproc, device="cuda" if device == "cuda" else "cpu", model=model,
                        batch_size=batch_size, threads_per_proc=threads or 1)
    with report.err_console.status(f"fer train in 1 process, then with --nproc {nproc}…"):
        r = run_scaling(cfg)
    if json_out:
        report.print_json(r)
        return
    report.console.print(
        f"{r['model']} on {r['device']}, global batch {r['global_batch']}: 1 process "
        f"{r['one_process_img_per_s']:,.1f} img/s, {nproc} processes {r['n_process_img_per_s']:,.1f} img/s — "
        f"speedup {r['speedup']:.2f}x, scaling efficiency {100 * r['scaling_efficiency']:.0f}% "
        f"(load average {r['load_average'][0]})", highlight=False)
