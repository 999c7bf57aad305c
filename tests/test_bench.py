"""`fer bench`: structure of the result (never speed), synthetic fallback, one-line errors."""

from __future__ import annotations

import json

import pytest
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
    res = runner.invoke(app, ["bench", "--device", "cpu", "--model", "resnet34", "--steps", "2",
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
    assert r["speedup"] == pytest.approx(r["engine_img_per_s"] / r["reference_img_per_s"], rel=1e-2)
    assert r["flops_per_image"] > 1e8  # ResNet34 at 48 px: ~1.1 GFLOP forward+backward
    assert r["engine_tflops"] == pytest.approx(r["flops_per_image"] * r["engine_img_per_s"] / 1e12,
                                               rel=1e-2, abs=1e-4)
    assert r["peak_matmul_tflops"] > 0 and 0 < r["fraction_of_peak"]
    assert r["inference_ms_per_face_batch1"] > 0 and r["inference_img_per_s_batched"] > 0
    assert r["reference"]["precision"] == "fp32" and r["engine"]["channels_last"] is True
    assert r["threads"] == 1


@pytest.mark.parametrize("args, culprit", [
    (["--model", "vgg16"], "vgg16"),
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
