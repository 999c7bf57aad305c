"""What a new user meets first: `fer` alone, exit codes as the help states them, -q, progress in logs.

The exit codes of `fer predict` (its --help): 0 every input read; 1 some file could not be read
as an image (reported, skipped); 2 a usage mistake (unknown option, a path that does not exist).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fercli.cli import app, report
from tests.fixtures import SAMPLE_DIR

runner = CliRunner()
GOOD = SAMPLE_DIR / "grace_hopper.jpg"


def test_fer_alone_prints_the_help_with_the_three_ways_in_and_exits_0():
    r = runner.invoke(app, [])
    assert r.exit_code == 0, r.output
    assert r.stdout == runner.invoke(app, ["--help"]).stdout
    head = r.stdout[: r.stdout.index("Options")]
    for way in ("fer predict photo.jpg", "fer serve", "fer prepare fer2013", "fer train"):
        assert way in head, way
    assert head.index("fer predict") < head.index("fer serve") < head.index("fer prepare")


def test_predict_help_states_every_exit_code():
    text = " ".join(runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "300"}).stdout.split())
    for code in ("0 when every input was read", "1 when some file could not be read", "2 for a mistake"):
        assert code in text, code


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "corrupt.jpg"
    path.write_bytes(b"not a jpeg at all")
    return path


def test_a_good_image_exits_0():
    r = runner.invoke(app, ["predict", str(GOOD), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["error"] is None


def test_a_corrupt_file_is_a_failed_input_exit_1_and_the_others_are_still_predicted(corrupt: Path):
    r = runner.invoke(app, ["predict", str(GOOD), str(corrupt), "--json"])
    assert r.exit_code == 1, r.output
    rows = json.loads(r.stdout)
    assert [row["error"] is None for row in rows] == [True, False]
    assert f"error: {corrupt}" in r.stderr


@pytest.mark.parametrize("args", [["{missing}"], ["{good}", "{missing}"], ["{good}", "--no-such-flag"],
                                  ["{good}", "--tta", "sideways"]])
def test_usage_mistakes_exit_2_before_anything_runs(tmp_path: Path, args: list[str]):
    argv = [a.format(missing=tmp_path / "missing.jpg", good=GOOD) for a in args]
    r = runner.invoke(app, ["predict", *argv, "--json"])
    assert r.exit_code == 2, r.output
    assert r.stdout == "" and "Traceback" not in r.output


def test_quiet_predict_prints_no_model_line_but_still_the_errors(corrupt: Path):
    loud = runner.invoke(app, ["predict", str(GOOD), str(corrupt)])
    assert "model: " in loud.stderr
    r = runner.invoke(app, ["predict", str(GOOD), str(corrupt), "-q"])
    assert r.exit_code == 1
    assert "model: " not in r.stderr and f"error: {corrupt}" in r.stderr
    assert "face(s) in 1 image(s)" in r.stdout


def _feed(progress: report.TrainProgress) -> None:
    with progress:
        progress("run_start", {"steps_per_epoch": 2, "epochs": 1, "start_epoch": 0, "train_images": 16,
                               "device": "cpu"})
        progress("epoch_start", {"epoch": 1, "epochs": 1})
        for _ in range(2):
            progress("step", {"images": 8})
        progress("epoch_end", {"epoch": 1, "train_acc": 0.5, "val_acc": 0.25, "val_loss": 1.5, "img_per_s": 100.0})


def test_training_progress_into_a_file_is_one_plain_line_per_epoch_not_bar_frames(capsys):
    _feed(report.TrainProgress())
    err = capsys.readouterr().err
    assert err.splitlines() == ["epoch 1: train 50.00%  val 25.00%  loss 1.500  100 img/s"], err
    _feed(report.TrainProgress(quiet=True))
    assert capsys.readouterr().err == ""
