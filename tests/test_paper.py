"""fercli/paper.py holds exactly the paper's numbers: compared with the transcription in
../shared/paper/obsr-net-tables.json when it is present."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fercli import paper

TABLES_JSON = Path(os.environ.get("FER_SHARED_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets")
                   ).parent / "paper" / "obsr-net-tables.json"


@pytest.fixture(scope="module")
def published() -> dict:
    if not TABLES_JSON.is_file():
        pytest.skip(f"paper tables not found at {TABLES_JSON}")
    return json.loads(TABLES_JSON.read_text())


def _rows(table: paper.PaperTable, column: str) -> dict[str, float]:
    return {r.printed or r.name: r.cells[column].value for r in table.rows}


def test_tables_1_and_2_match_the_transcription(published: dict) -> None:
    for ours, key in ((paper.TABLE1, "table1_fer2013_per_class"), (paper.TABLE2, "table2_ckplus_per_class")):
        assert published[key]["columns"] == ["precision", "recall", "f1"]
        assert {c: list(v) for c, v in ours.rows.items()} == published[key]["rows"], key


def test_tables_3_to_5_match_the_transcription(published: dict) -> None:
    assert _rows(paper.TABLE3, "fer2013") == published["table3_fer2013_methods"]
    assert _rows(paper.TABLE4, "ck+") == published["table4_ckplus_methods"]
    t5 = published["table5_ablation"]
    assert t5["columns"] == ["fer2013", "ckplus"]
    assert {r.printed or r.name: [r.cells["fer2013"].value, r.cells["ck+"].value] for r in paper.TABLE5.rows} \
        == t5["rows"]


def test_settings_counts_and_claims_match(published: dict) -> None:
    assert paper.HYPERPARAMETERS == published["hyperparameters"]
    assert paper.CLASS_COUNTS["fer2013"] == published["class_counts"]["fer2013"]
    assert paper.CLASS_COUNTS["ck+"] == published["class_counts"]["ckplus"]
    assert paper.TEXT_CLAIMS == published["text_claims"]


def test_every_cell_is_filled_and_sourced() -> None:
    cells = [c for t in paper.TABLES for r in t.rows for c in r.cells.values()]
    assert cells and all(c.value is not None and c.source for c in cells)
    assert paper.table5_value("ResNet34_Pretrain_BCN_GC", "fer2013").value == 77.65
    assert paper.table5_value("no such row", "fer2013").value is None
