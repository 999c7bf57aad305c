"""The OBSR-Net paper's published numbers, as data: Tables 1–5, hyper-parameters, class counts.

Lyu J, Fan WT, Chen FL, Wang ZW (吕军 et al.), 优化双线性ResNet34的人脸表情识别 ("Facial
Expression Recognition via Optimized Bilinear ResNet34"), 计算机系统应用 (Computer Systems &
Applications) 2024, 33(11): 27-37, https://c-s-a.org.cn/html/2024/11/9682.html

Copied from the transcription of the published article in ../shared/paper/obsr-net-tables.json
(sections 3.1-3.6); tests/test_paper.py compares every number here with that file. Tables 1-2
are fractions (precision, recall, F1 per class); Tables 3-5 are accuracies in percent. Every
paper number is for the ImageNet-pretrained OBSR-Net trained 200 epochs (Tables 1-2, the last
rows of Tables 3-5) or is a row the paper cites or ablates; nothing here is fercli's.
"""

from __future__ import annotations

from dataclasses import dataclass

CITATION = ("Lyu J, Fan WT, Chen FL, Wang ZW (吕军 et al.), 优化双线性ResNet34的人脸表情识别 (Facial "
            "Expression Recognition via Optimized Bilinear ResNet34), 计算机系统应用 (Computer Systems & "
            "Applications) 2024, 33(11): 27-37")
URL = "https://c-s-a.org.cn/html/2024/11/9682.html"
NOT_TRANSCRIBED = "n/a (not transcribed)"
NOT_TRANSCRIBED_NOTE = ("n/a (not transcribed): this cell of the paper could not be read offline; "
                        "see the article at " + URL)

# §3.2: training settings of the paper (fercli: `fer train --preset paper`).
HYPERPARAMETERS = {
    "batch_size": 16,
    "learning_rate": 0.0001,
    "epochs": 200,
    "loss": "cross-entropy",
    "optimizer_fer2013": "AdamW with gradient centralization",
    "optimizer_ckplus": "Adam with gradient centralization",
    "ckplus_image_size": "640x490 frames resized to 48x48",
}

# §3.1: images per class, all splits together.
CLASS_COUNTS = {
    "fer2013": {"angry": 4953, "disgust": 547, "fear": 5121, "happy": 8989, "sad": 6077,
                "surprise": 4002, "neutral": 6198},
    "ck+": {"anger": 135, "disgust": 177, "fear": 75, "happy": 207, "sadness": 84, "surprise": 249,
            "contempt": 54},
}


@dataclass(frozen=True)
class Cell:
    """One published accuracy in percent (None = not transcribed) and where it was read."""

    value: float | None
    source: str | None = None

    def text(self) -> str:
        return NOT_TRANSCRIBED if self.value is None else f"{self.value:.2f}"


@dataclass(frozen=True)
class PaperRow:
    name: str  # fercli's name for the row (Table 5: the ablation ladder's rung name)
    cells: dict[str, Cell]  # column -> cell
    note: str = ""
    printed: str = ""  # the row name as the paper prints it, when it differs from `name`


@dataclass(frozen=True)
class PaperTable:
    number: int
    title: str
    columns: tuple[str, ...]
    rows: tuple[PaperRow, ...]
    note: str = ""


@dataclass(frozen=True)
class PerClassTable:
    """Tables 1-2: OBSR-Net's per-class precision, recall and F1 (fractions), test data."""

    number: int
    dataset: str  # fer2013 | ck+
    title: str
    rows: dict[str, tuple[float, float, float]]  # class (paper's spelling) -> (P, R, F1)


TABLE1 = PerClassTable(1, "fer2013", "OBSR-Net on FER2013: per-class precision, recall, F1", {
    "angry": (0.87, 0.79, 0.828),
    "disgust": (0.934, 0.864, 0.898),
    "fear": (0.835, 0.773, 0.803),
    "happy": (0.879, 0.88, 0.879),
    "neutral": (0.617, 0.667, 0.641),
    "sad": (0.481, 0.616, 0.54),
    "surprise": (0.761, 0.844, 0.8),
})
TABLE2 = PerClassTable(2, "ck+", "OBSR-Net on CK+: per-class precision, recall, F1", {
    "angry": (1.0, 1.0, 1.0),
    "contempt": (0.818, 1.0, 0.9),
    "disgust": (1.0, 1.0, 1.0),
    "fear": (1.0, 1.0, 1.0),
    "happy": (1.0, 1.0, 1.0),
    "sadness": (1.0, 1.0, 1.0),
    "surprise": (1.0, 0.953, 0.976),
})
PER_CLASS_TABLES = (TABLE1, TABLE2)
# Dataset class names -> the paper's (CK+48 folders say "anger", Table 2 says "angry"; the
# FER2013 folders say "sad", CK+ "sadness").
_CLASS_ALIASES = {"anger": ("angry",), "angry": ("anger",), "sad": ("sadness",), "sadness": ("sad",),
                  "happiness": ("happy",), "surprised": ("surprise",)}


def _t(source: str, **values: float) -> dict[str, Cell]:
    return {k.replace("ckplus", "ck+"): Cell(v, source) for k, v in values.items()}


def _methods(number: int, column: str, what: str, rows: dict[str, float]) -> PaperTable:
    return PaperTable(
        number=number,
        title=f"{what}: OBSR-Net against other methods (accuracy %)",
        columns=(column,),
        rows=tuple(PaperRow(name, {column: Cell(v, f"Table {number}")}) for name, v in rows.items()),
        note="Rows as printed; [n] is the article's reference number. Each row is the accuracy the "
             "paper reports for that method.",
    )


TABLE3 = _methods(3, "fer2013", "FER2013", {
    "ResNet34 [22]": 70.55, "VGG16 [31]": 71.52, "MobileNetV3 [32]": 68.24, "ResMasking [33]": 71.97,
    "Deep-emotion [34]": 70.02, "GARAN [35]": 72.14, "VGNFL [36]": 72.49, "FERDL [37]": 75.8,
    "Ours (OBSR-Net)": 77.65,
})
TABLE4 = _methods(4, "ck+", "CK+", {
    "AlexNet [20]": 93.59, "ResNet34 [22]": 97.81, "VGG16 [31]": 97.12, "DenseNet121 [38]": 94.69,
    "ResMasking [33]": 98.46, "GARAN [35]": 98.67, "DeRL [39]": 97.3, "Ours (OBSR-Net)": 98.82,
})

# Table 5: the ablation ladder. Row names are fercli's rung names (the paper's, with its
# first row printed as "ResNet34 (baseline)"); columns are test accuracy (%).
TABLE5 = PaperTable(
    number=5,
    title="Ablation: transfer learning (Pretrain), bilinear structure (BCN), gradient centralization (GC)",
    columns=("fer2013", "ck+"),
    rows=(
        PaperRow("ResNet34", _t("Table 5", fer2013=70.55, ckplus=97.81),
                 "the paper's baseline ResNet34, no GC (its FER2013 value equals Table 3's cited ResNet34 [22])",
                 printed="ResNet34 (baseline)"),
        PaperRow("ResNet34_Pretrain", _t("Table 5", fer2013=74.29, ckplus=97.98), "ImageNet-pretrained, no GC"),
        PaperRow("ResNet34_Pretrain_BCN", _t("Table 5", fer2013=75.61, ckplus=98.31),
                 "bilinear ResNet34, ImageNet-pretrained, no GC"),
        PaperRow("ResNet34_Pretrain_BCN_GC", _t("Table 5", fer2013=77.65, ckplus=98.82),
                 "the full OBSR-Net (AdamW-GC / Adam-GC), ImageNet-pretrained"),
    ),
)

TABLES = (TABLE3, TABLE4, TABLE5)
TEXT_CLAIMS = {
    "fig9_ckplus": "only some surprise images were misrecognised as contempt; every other class 100%",
    "gain_over_backbone": "+7.10 points on FER2013, +1.01 on CK+",
}


def table5_value(row: str, dataset: str) -> Cell:
    """The paper's Table 5 cell for a ladder row in column `dataset` ('fer2013' or 'ck+';
    fercli.data.registry's paper_column), Cell(None) if absent."""
    for r in TABLE5.rows:
        if r.name == row:
            return r.cells.get(dataset, Cell(None))
    return Cell(None)


def per_class_table(column: str, classes: list[str]) -> PerClassTable | None:
    """Table 1 (column 'fer2013') or Table 2 ('ck+') when `classes` are that table's classes,
    else None. `column` is the dataset's paper_column in fercli.data.registry."""
    for t in PER_CLASS_TABLES:
        if t.dataset == column and all(paper_class(t, c) is not None for c in classes):
            return t
    return None


def paper_class(table: PerClassTable, cls: str) -> str | None:
    """The paper's spelling of dataset class `cls` in `table` (None when it has no such row)."""
    for name in (cls, *_CLASS_ALIASES.get(cls, ())):
        if name in table.rows:
            return name
    return None


def as_dict() -> dict:
    return {
        "citation": CITATION,
        "url": URL,
        "hyperparameters": HYPERPARAMETERS,
        "class_counts": CLASS_COUNTS,
        "per_class_tables": [
            {"number": t.number, "dataset": t.dataset, "title": t.title,
             "columns": ["precision", "recall", "f1"], "rows": {c: list(v) for c, v in t.rows.items()}}
            for t in PER_CLASS_TABLES
        ],
        "tables": [
            {"number": t.number, "title": t.title, "columns": list(t.columns), "note": t.note,
             "rows": [{"name": r.name, "printed": r.printed or r.name, "note": r.note,
                       **{c: {"value": r.cells[c].value, "source": r.cells[c].source} for c in t.columns}}
                      for r in t.rows]}
            for t in TABLES
        ],
        "text_claims": TEXT_CLAIMS,
    }
