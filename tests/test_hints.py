"""Messages in the caller's vocabulary: every `--flag` a hint names exists on the command that
prints it, and names (splits) are spelled as the option takes them."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fercli.cli import app
from tests.fixtures import fake_run, make_fer_like

runner = CliRunner()


@pytest.fixture(scope="module")
def fer_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fer")
    return fake_run(root / "run", make_fer_like(root / "fer"))


def test_a_split_the_dataset_lacks_is_refused_naming_the_splits_as_the_option_spells_them(fer_run: Path):
    r = runner.invoke(app, ["evaluate", str(fer_run), "--split", "test", "--device", "cpu"])
    assert r.exit_code == 2, r.output
    line = r.stderr.strip()
    assert line.startswith("error: --split test:") and "\n" not in line
    assert "private-test" in line and "public-test" in line and "_" not in line.split(":", 1)[1], line


def test_split_help_says_which_splits_each_dataset_has():
    text = " ".join(runner.invoke(app, ["evaluate", "--help"], env={"COLUMNS": "300"}).stdout.split())
    assert "FER2013: private-test" in text and "public-test" in text and "CK+: fold" in text
