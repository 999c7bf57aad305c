"""`fer bench`: structure of the result (never speed), synthetic fallback, one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from fercli.cli import app

runner = CliRunner()

KEYS = (
    "engine_img_per_s", "reference_img_per_s", "speedup", "flops_per_image", "device", "data",
    "model", "batch_size", "image_size", "steps", "engine_tflops", "peak_matmul_tflops",
    "fraction_of_peak", "inference_ms_per_face_batch1", "inference_img_per_s_batched",
    "torch_version", "date",
)


@pytest.fixture()
def no_data(tmp_path, monkeypatch):
    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv("FER_DATA_DIR", str(empty))
    return empty


def test_bench_json_on_synthetic_data(no_data):
    res = runner.invoke(app, ["bench", "--device", "cpu", "--arch", "resnet34", "--steps", "2",
                              "--warmup", "1", "--batch-size", "4", "--inference-batch", "4",
                              "--threads", "1", "--json"])  # 1 thread: robust on a shared CPU
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)  # --json: nothing but the JSON on stdout
    for key in KEYS:
        assert key in r, key
    assert r["data"] == "synthetic"  # FER2013 is not prepared under FER_DATA_DIR: it says so
    assert any("synthetic" in n for n in r["notes"])
    assert r["device"].startswith("cpu")
    assert (r["model"], r["batch_size"], r["image_size"], r["steps"]) == ("resnet34", 4, 48, 2)
    assert r["engine_img_per_s"] > 0 and r["reference_img_per_s"] > 0
    assert r["flops_per_image"] > 1e8  # ResNet34 at 48 px: ~1.1 GFLOP forward+backward
    assert r["peak_matmul_tflops"] > 0 and 0 < r["fraction_of_peak"]
    # Only the dtype the engine trains in is timed (no emulated bf16 matmuls on AVX2 CPUs).
    assert set(r["matmul_tflops"]) == {r["peak_dtype"]} == {r["engine"]["precision"]}
    assert r["cpu_isa"] == torch.backends.cpu.get_cpu_capability()  # the peak is this ISA's
    assert r["engine_graphed"] is False and r["engine_eager_img_per_s"] is None  # CPU: eager only
    assert r["inference_ms_per_face_batch1"] > 0 and r["inference_img_per_s_batched"] > 0
    assert r["reference"]["precision"] == "fp32" and r["engine"]["channels_last"] is True
    assert r["threads"] == 1


@pytest.mark.parametrize("args, culprit", [
    (["--arch", "vgg16"], "vgg16"),
    (["--batch-size", "0"], "--batch-size"),
    (["--dataset", "/nonexistent/prepared"], "/nonexistent/prepared"),
    (["--compile", "--compile-mode", "fastest"], "fastest"),
])
def test_bench_bad_options_are_one_line_errors(no_data, args, culprit):
    res = runner.invoke(app, ["bench", "--device", "cpu", "--json", *args])
    assert res.exit_code == 2
    assert res.stdout == ""
    err = res.stderr.strip()
    assert err.startswith("error: ") and culprit in err and "\n" not in err


def test_gpu_check_prepare_of_fer2013_folders_needs_no_haar_cascade(tmp_path, monkeypatch):
    """The device has OpenCV 5 (no CascadeClassifier, no bundled cascades): devtools/gpu_check/gpu_check.sh's
    `fer prepare fer2013 FOLDERS` must never reach for the detector."""
    import cv2

    from fercli.data.ingest import prepare_fer2013
    from fercli.vision import faces
    from tests.fixtures import make_fer_folders

    def no_cascade(*a, **k):
        raise AssertionError("prepare loaded the Haar cascade")

    monkeypatch.setattr(faces, "haar_detector", no_cascade)
    monkeypatch.delattr(cv2, "CascadeClassifier", raising=False)  # as on OpenCV 5
    res = prepare_fer2013(make_fer_folders(tmp_path / "src"), out=tmp_path / "fer")
    assert (tmp_path / "fer" / "manifest.json").is_file() and res.out == tmp_path / "fer"


def test_time_cap_shrinks_the_timed_steps():
    """A cap far below one step's time: the bench times the minimum (2 steps), not 50."""
    from fercli.bench.engine_bench import BenchConfig, run_bench

    r = run_bench(BenchConfig(device="cpu", model="resnet34", batch_size=2, steps=50, warmup=2, synthetic=True,
                              reference=False, inference=False, threads=1, time_cap_s=0.01))
    assert r["steps"] == 2 and r["time_cap_s"] == 0.01
    assert any("cap" in n for n in r["notes"])  # it says it went over


def test_flops_grow_with_the_input_area():
    """An independent property of the FLOP counter: doubling the input side of a conv net
    roughly quadruples its FLOPs (less at the end: the 2×2 map at 48 px becomes 3×3, not 4×4)."""
    import torch

    from fercli.bench.measure import flops_per_image
    from fercli.model.networks import build_model

    f = {}
    for size in (48, 96):
        torch.manual_seed(0)
        m = build_model("resnet34", 7, image_size=size, pretrained=False)
        x = torch.rand(2, 1, 48, 48)  # faces are 48×48; the model resizes to image_size
        f[size] = flops_per_image(m, x, torch.tensor([0, 1]))
    assert 3.0 < f[96] / f[48] < 4.5, f
