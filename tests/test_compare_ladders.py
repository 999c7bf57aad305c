"""devtools/release/compare_ladders.py: two ladders of one recipe, row by row, fold by fold."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from devtools.release import compare_ladders


def test_pairs_only_shared_folds_of_each_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the curated shape (rows at the top) against a `fer ablate --json` shape (rows under tables)
    short = {"rows": [{"name": "A", "per_fold_pct": {"0": 80.0, "1": 70.0, "2": 90.0}},
                      {"name": "B", "per_fold_pct": {"0": 60.0}}]}
    long = {"tables": [{"rows": [{"name": "A", "per_fold_pct": {"0": 81.0, "1": 72.0, "5": 10.0}},
                                 {"name": "B", "per_fold_pct": {}}]}]}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(short))
    b.write_text(json.dumps(long))
    (row,) = compare_ladders.compare(compare_ladders.ladder_rows(a), compare_ladders.ladder_rows(b))
    assert row["row"] == "A" and row["folds"] == ["0", "1"]  # fold 2 and fold 5 are in one ladder only
    assert (row["first_mean_pct"], row["second_mean_pct"]) == (75.0, 76.5)
    assert row["diffs_pp"] == [1.0, 2.0] and row["mean_change_pp"] == pytest.approx(1.5)
    # two differences 1 and 2: sd 1/√2, t = 1.5 / 0.5 = 3 on 1 df, p = 1 − 2·atan(3)/π
    assert row["t_p"] == pytest.approx(1 - 2 * math.atan(3) / math.pi)
    assert compare_ladders.main([str(a), str(b)]) == 0
    assert "+1.50" in capsys.readouterr().out
    assert compare_ladders.main([str(a), str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
