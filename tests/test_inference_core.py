"""The inference core without torch: in a fresh process where torch cannot be imported (as in
`pip install fercli` without the [train] extra), the default Recognizer and `fer predict`
classify the sample photos from the bundled model's shipped int8 graph; what needs torch says
which extra to install, in one line. And the shipped graph is the one the torch route builds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fercli.export.onnx_runtime import OnnxClassifier
from fercli.files import read_shards
from fercli.model.locate import DEFAULT_GRAPH
from tests.fixtures import SAMPLE_DIR

REPO = Path(__file__).resolve().parents[1]
# torch, torchvision, scikit-learn and onnx made unimportable before anything else runs.
NO_TORCH = ("import sys\n"
            "for m in ('torch', 'torchvision', 'sklearn', 'onnx'):\n"
            "    sys.modules[m] = None\n")


def run_without_torch(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", NO_TORCH + code, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=240)


def test_the_default_recognizer_predicts_without_torch() -> None:
    res = run_without_torch(
        "import fercli\n"
        "rec = fercli.Recognizer()\n"
        "faces = rec.predict(sys.argv[1])\n"
        "print(rec.backend_reason)\n"
        "print([f.label for f in faces])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'sklearn')"
        " and sys.modules[m] is not None))\n",
        str(SAMPLE_DIR / "two_faces.jpg"))
    assert res.returncode == 0, res.stderr
    reason, labels, loaded = res.stdout.splitlines()
    assert reason == "auto: CPU, onnxruntime, int8 (auto: the bundled model)"
    assert labels == "['happy', 'neutral']"
    assert loaded == "[]"


def test_fer_predict_json_is_the_same_without_torch() -> None:
    code = "from fercli.cli import main\nsys.argv = ['fer', 'predict', sys.argv[1], '--json']\nmain()\n"
    without = run_without_torch(code, str(SAMPLE_DIR))
    assert without.returncode == 0, without.stderr
    with_torch = subprocess.run([sys.executable, "-m", "fercli", "predict", str(SAMPLE_DIR), "--json"], cwd=REPO,
                                capture_output=True, text=True, timeout=240)
    assert with_torch.returncode == 0, with_torch.stderr
    assert without.stdout == with_torch.stdout
    rows = json.loads(without.stdout)
    assert [len(r["faces"]) for r in rows] == [1, 1, 2]


def test_a_torch_model_without_torch_names_the_extra_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "m.pt").write_bytes(b"not read: torch is missing first")
    res = run_without_torch(
        "import fercli\n"
        "try:\n"
        "    fercli.Recognizer(model=sys.argv[1])\n"
        "except fercli.FerError as exc:\n"
        "    print(exc, exc.exit_code)\n", str(tmp_path / "m.pt"))
    assert res.returncode == 0, res.stderr
    (line,) = res.stdout.splitlines()
    assert "pip install 'fercli[train]'" in line and "torch is not installed" in line and line.endswith(" 2")


@pytest.mark.parametrize("argv", [["train", "--dataset", "fer2013"], ["evaluate", "default"],
                                  ["calibrate", "default"], ["export", "default", "--out", "x.npz"],
                                  ["bench", "--synthetic"], ["ablate", "--no-estimate"],
                                  ["predict", "sample_images", "--backend", "torch"]])
def test_commands_that_need_torch_say_which_extra_in_one_line(argv: list[str], tmp_path: Path) -> None:
    """Without the [train] extra, each command that needs torch answers one line naming it,
    exit 2, no traceback, nothing on stdout; and the check is not vacuous: with torch
    importable `fer train` gets past it (to the missing dataset)."""
    code = "from fercli.cli import main\nsys.argv = ['fer', *sys.argv[1:]]\nmain()\n"
    res = subprocess.run([sys.executable, "-c", NO_TORCH + code, *argv], cwd=REPO, capture_output=True,
                         text=True, timeout=240, env={**os.environ, "FER_DATA_DIR": str(tmp_path)})
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "pip install 'fercli[train]'" in lines[0], lines
    assert "Traceback" not in res.stderr and res.stdout == ""
    if argv[0] == "train":
        with_torch = subprocess.run([sys.executable, "-m", "fercli", "train", "--dataset", str(tmp_path / "none")],
                                    cwd=REPO, capture_output=True, text=True, timeout=240)
        assert with_torch.returncode != 0 and "fercli[train]" not in with_torch.stderr


@pytest.mark.slow
def test_the_shipped_graph_is_what_the_torch_route_builds() -> None:
    """devtools/release/ship_graph.py wrote the shipped graph from the shipped weights; a fresh
    build from them must agree, so the torch-free route answers what the torch route would."""
    from fercli.export.onnx_format import sample_calibration_faces
    from fercli.infer.torch_backend import BUNDLED_SOURCE, bundled_graph_bytes

    shipped = OnnxClassifier(read_shards(Path(f"{DEFAULT_GRAPH}.index.json")))
    fresh = OnnxClassifier(bundled_graph_bytes())
    assert shipped.meta == fresh.meta and shipped.meta["source_model"] == BUNDLED_SOURCE
    assert shipped.describe()["precision"] == "int8"
    faces = sample_calibration_faces(64, seed=3)
    a, b = shipped.predict_proba(faces), fresh.predict_proba(faces)
    assert np.array_equal(a.argmax(1), b.argmax(1))
    np.testing.assert_allclose(a, b, atol=2e-3)  # quantisation ranges may move by a ULP across CPUs
