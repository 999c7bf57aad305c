"""The OBSR-Net paper's published numbers, as data, each with where it was read.

吕军 (LYU Jun) et al., 优化双线性ResNet34的人脸表情识别 ("Facial Expression Recognition via
Optimized Bilinear ResNet34"), 计算机系统应用 (Computer Systems & Applications) 2024,
33(11): 27-37, https://c-s-a.org.cn/html/2024/11/9682.html

Only numbers actually read from the paper are recorded. The abstract gives the full
model's accuracies (77.65% FER2013, 98.82% CK+); the FER2013 ResNet34 baseline of Table 5
(70.55%) was supplied with the project brief. The remaining cells of Tables 3-5 could not
be transcribed here (the stored copy of the article reachable offline ends before its
experiments section), so they are None and print as "n/a (not transcribed)" — they are
never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

CITATION = ("吕军 et al., 优化双线性ResNet34的人脸表情识别 (Facial Expression Recognition via Optimized "
            "Bilinear ResNet34), 计算机系统应用 2024, 33(11): 27-37")
URL = "https://c-s-a.org.cn/html/2024/11/9682.html"
NOT_TRANSCRIBED = "n/a (not transcribed)"
NOT_TRANSCRIBED_NOTE = ("n/a (not transcribed): this cell of the paper could not be read offline; "
                        "see the article at " + URL)

SRC_ABSTRACT = "abstract"
SRC_BRIEF = "Table 5 (value supplied with the project brief)"


@dataclass(frozen=True)
class Cell:
    """One published accuracy in percent (None = not transcribed) and where it was read."""

    value: float | None
    source: str | None = None

    def text(self) -> str:
        return NOT_TRANSCRIBED if self.value is None else f"{self.value:.2f}"


@dataclass(frozen=True)
class PaperRow:
    name: str
    cells: dict[str, Cell]  # column -> cell
    note: str = ""


@dataclass(frozen=True)
class PaperTable:
    number: int
    title: str
    columns: tuple[str, ...]
    rows: tuple[PaperRow, ...]
    note: str = ""


_NA = Cell(None)

# Table 5: the ablation ladder. Row names are the paper's; columns are test accuracy (%).
TABLE5 = PaperTable(
    number=5,
    title="Ablation: transfer learning (Pretrain), bilinear structure (BCN), gradient centralization (GC)",
    columns=("fer2013", "ck+"),
    rows=(
        PaperRow("ResNet34", {"fer2013": Cell(70.55, SRC_BRIEF), "ck+": _NA},
                 "from scratch, no GC (AdamW on FER2013 / Adam on CK+)"),
        PaperRow("ResNet34_Pretrain", {"fer2013": _NA, "ck+": _NA}, "ImageNet-pretrained, no GC"),
        PaperRow("ResNet34_Pretrain_BCN", {"fer2013": _NA, "ck+": _NA}, "bilinear ResNet34, pretrained, no GC"),
        PaperRow("ResNet34_Pretrain_BCN_GC", {"fer2013": Cell(77.65, SRC_ABSTRACT), "ck+": Cell(98.82, SRC_ABSTRACT)},
                 "the full OBSR-Net (AdamW-GC / Adam-GC)"),
    ),
)

TABLE3 = PaperTable(
    number=3,
    title="FER2013: OBSR-Net against other methods (accuracy %)",
    columns=("fer2013",),
    rows=(PaperRow("OBSR-Net", {"fer2013": Cell(77.65, SRC_ABSTRACT)}),),
    note="Only OBSR-Net's own row is transcribed (from the abstract); the compared methods' rows are not.",
)

TABLE4 = PaperTable(
    number=4,
    title="CK+: OBSR-Net against other methods (accuracy %)",
    columns=("ck+",),
    rows=(PaperRow("OBSR-Net", {"ck+": Cell(98.82, SRC_ABSTRACT)}),),
    note="Only OBSR-Net's own row is transcribed (from the abstract); the compared methods' rows are not.",
)

TABLES = (TABLE3, TABLE4, TABLE5)


def table5_value(row: str, dataset: str) -> Cell:
    """The paper's Table 5 cell for a ladder row on 'fer2013' or 'ck+' (Cell(None) if absent)."""
    for r in TABLE5.rows:
        if r.name == row:
            return r.cells.get(dataset, _NA)
    return _NA


def as_dict() -> dict:
    return {
        "citation": CITATION,
        "url": URL,
        "tables": [
            {"number": t.number, "title": t.title, "columns": list(t.columns), "note": t.note,
             "rows": [{"name": r.name, "note": r.note,
                       **{c: {"value": r.cells[c].value, "source": r.cells[c].source} for c in t.columns}}
                      for r in t.rows]}
            for t in TABLES
        ],
        "not_transcribed": NOT_TRANSCRIBED_NOTE,
    }
