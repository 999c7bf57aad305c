"""`fer export` / fercli.export.npz_format: fp16 .npz round trip, shards, corrupt files (untrained models)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fercli.cli import app
from fercli.errors import FerError
from fercli.export.npz_format import INDEX_SUFFIX, META_KEY, export_model, load_exported
from fercli.export.sidecar import find_sidecar, read_sidecar, sidecar_path
from tests.fixtures import CLASSES, face_image, make_run

runner = CliRunner()
def faces_batch(n: int = 4) -> torch.Tensor:
    base = torch.from_numpy(np.array(face_image(48))).float().div(255)
    return torch.stack([base.roll(i, dims=1) for i in range(n)]).unsqueeze(1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    d = tmp_path_factory.mktemp("export") / "run"
    model = make_run(d, metrics={"split": "private_test", "accuracy": 0.5, "macro_f1": 0.4})
    return d, model


def test_round_trip_fp16_matches_original(run_dir: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    d, model = run_dir
    info = export_model(d, tmp_path / "m.npz")
    assert info["dtype"] == "float16" and info["private_test_accuracy"] == 0.5
    assert info["model_spec"] == dict(model.spec) and info["classes"] == CLASSES
    assert "fer train" in info["training_command"] and info["dataset_sha256"] == "ab" * 32
    # Compact: about 2 bytes per parameter.
    n_params = sum(p.numel() for p in model.parameters())
    assert (tmp_path / "m.npz").stat().st_size < 2.2 * n_params
    loaded, meta = load_exported(tmp_path / "m.npz")
    assert meta["classes"] == CLASSES and not loaded.training
    x = faces_batch()
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert torch.allclose(a, b, atol=2e-2, rtol=2e-2), (a - b).abs().max()
    assert torch.equal(a.argmax(1), b.argmax(1))
    sd = loaded.state_dict()
    assert all(v.dtype == torch.float32 for k, v in sd.items() if v.is_floating_point())
    assert int(sd["trunk.bn1.num_batches_tracked"]) == 123
    # Plain arrays only, readable without pickle; the sidecar holds the same metadata.
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        assert z["fc.weight"].dtype == np.float16 and z["trunk.bn1.num_batches_tracked"].dtype == np.int64
        assert json.loads(z[META_KEY].tobytes())["format"] == "fercli-export-v1"
    assert json.loads((tmp_path / "m.npz.json").read_text())["classes"] == CLASSES


def test_shards_round_trip_and_cli(run_dir: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    d, model = run_dir
    out = tmp_path / "sharded.npz"
    res = runner.invoke(app, ["export", str(d), "--out", str(out), "--max-shard-mb", "16"])
    assert res.exit_code == 0, res.output
    assert "MB" in res.stdout and str(out) in res.stdout
    parts = sorted(tmp_path.glob("sharded.npz.part*"))
    assert len(parts) >= 3 and all(p.stat().st_size <= 16 * 1024 * 1024 for p in parts)
    assert not out.exists() and Path(f"{out}{INDEX_SUFFIX}").is_file()
    loaded, _ = load_exported(out)  # the .npz name finds its index
    x = faces_batch(2)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=2e-2, rtol=2e-2)
    # A damaged shard is refused, naming it.
    parts[1].write_bytes(parts[1].read_bytes()[:-10])
    with pytest.raises(FerError, match=parts[1].name):
        load_exported(out)


def test_truncated_and_bad_files_are_one_line_errors(run_dir: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    d, _ = run_dir
    good = tmp_path / "good.npz"
    export_model(d, good)
    data = good.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(FerError, match="cut.npz.*(truncated|corrupt)"):
        load_exported(cut)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(FerError, match="empty.npz"):
        load_exported(empty)
    # A plain npz without metadata, and one whose arrays do not fit the spec.
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(FerError, match="not a fercli exported model"):
        load_exported(tmp_path / "plain.npz")
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(tmp_path / "wrong.npz", "w") as zout:
        for item in zin.infolist():
            if item.filename != "fc.weight.npy":
                zout.writestr(item, zin.read(item))
    with pytest.raises(FerError, match="wrong.npz.*missing"):
        load_exported(tmp_path / "wrong.npz")
    with pytest.raises(FerError, match="does not exist"):
        load_exported(tmp_path / "nope.npz")


def test_export_cli_errors(tmp_path: Path) -> None:
    res = runner.invoke(app, ["export", str(tmp_path), "--out", str(tmp_path / "m.npz")])
    assert res.exit_code == 2 and "no best.pt" in res.stderr
    res = runner.invoke(app, ["export", str(tmp_path / "missing"), "--out", str(tmp_path / "m.npz")])
    assert res.exit_code == 2 and "does not exist" in res.stderr


@pytest.mark.slow
def test_bilinear_shared_round_trip(tmp_path: Path) -> None:
    model = make_run(tmp_path / "run", "bcnn-resnet34", shared=True)
    export_model(tmp_path / "run", tmp_path / "b.npz")
    loaded, info = load_exported(tmp_path / "b.npz")
    assert info["model_spec"]["shared_backbone"] is True
    x = faces_batch(2)
    with torch.no_grad():
        pa, pb = model(x).softmax(1), loaded(x).softmax(1)
    assert torch.allclose(pa, pb, atol=5e-3)


def test_amend_metadata_corrects_provenance_and_keeps_the_weights(run_dir: tuple[Path, torch.nn.Module],
                                                                   tmp_path: Path) -> None:
    """What devtools/release/ship_model.py does to a device call's export: same weights, corrected
    code_version, a provenance_corrections entry; the original untouched."""
    from fercli.export.npz_format import amend_metadata

    src = tmp_path / "call" / "model.npz"
    export_model(run_dir[0], src, max_shard_mb=0.5)
    before = {p.name: p.read_bytes() for p in src.parent.iterdir()}
    original_sha = json.loads(Path(f"{src}.index.json").read_text())["sha256"]
    info = amend_metadata(src, tmp_path / "ship" / "default_model.npz", {"code_version": "abc123"},
                          why="the device copy has no checkout", how="re-packed")
    assert {p.name: p.read_bytes() for p in src.parent.iterdir()} == before  # the source is untouched
    a, meta_a = load_exported(src)
    b, meta_b = load_exported(tmp_path / "ship" / "default_model.npz")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert meta_b["code_version"] == "abc123" and info["sharded"]
    (fix,) = meta_b["provenance_corrections"]
    assert fix["recorded"] == meta_a["code_version"] and fix["corrected_to"] == "abc123"
    assert fix["original_archive_sha256"] == original_sha
    with pytest.raises(FerError, match="beside the original"):
        amend_metadata(src, src, {"code_version": "x"}, why="", how="")


def test_export_resolves_its_source_like_every_command(tmp_path):
    """SOURCE goes through fercli.model.locate: the same references and one-line messages."""
    graph = tmp_path / "m.onnx"
    graph.write_bytes(b"onnx")
    for source, fmt, message in [(str(graph), "onnx", "is an ONNX graph"), ("default", "npz", "is an exported model"),
                                 (str(tmp_path / "absent"), "npz", "does not exist (give a run directory")]:
        out = tmp_path / f"out.{fmt}"
        r = runner.invoke(app, ["export", source, "--format", fmt, "--out", str(out)])
        assert r.exit_code == 2 and not out.exists(), r.output
        (line,) = r.stderr.strip().splitlines()
        assert line.startswith(f"error: SOURCE {source}") and message in line, line


def test_sidecar_is_named_after_the_model_file_and_old_names_still_read(
        run_dir: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    d, _ = run_dir
    info = export_model(d, tmp_path / "sh" / "ck.npz", max_shard_mb=0.05)  # sharded: beside the index
    assert info["sidecar"] == str(tmp_path / "sh" / "ck.npz.json")
    assert sidecar_path(tmp_path / "sh" / f"ck.npz{INDEX_SUFFIX}") == tmp_path / "sh" / "ck.npz.json"
    assert read_sidecar(tmp_path / "sh" / f"ck.npz{INDEX_SUFFIX}")["format"] == "fercli-export-v1"
    # An export written before the sidecar had its model's extension in its name: ck.json.
    old = tmp_path / "old"
    old.mkdir()
    (old / "ck.json").write_text(json.dumps({"format": "fercli-export-v1", "classes": CLASSES}))
    assert find_sidecar(old / "ck.npz") == old / "ck.json"
    assert read_sidecar(old / "ck.npz")["classes"] == CLASSES
    (old / "ck.npz.json").write_text(json.dumps({"format": "new"}))  # the own name wins when both exist
    assert read_sidecar(old / "ck.npz")["format"] == "new"
    with pytest.raises(FerError, match="other.onnx.json"):
        read_sidecar(old / "other.onnx")
