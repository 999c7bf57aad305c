"""The datasets fercli knows, one entry each: everything that differs between FER2013 and CK+.

A DatasetSpec holds a dataset's facts in one place:

    name, aliases      what `--dataset` and `fer prepare` accept (case-insensitive), and the
                       name the prepared manifest records
    folder             where `fer prepare` writes it under the data root ($FER_DATA_DIR, ./data)
    classes            the label order of its prepared data
    splits             how its rows become train / selection / report (FixedSplits, SubjectFolds)
    paper_optimizer    the paper's optimizer for it (`--optimizer auto`, the Table 5 ladder)
    paper_column       its key in the paper's tables (fercli.paper), and paper_label, the
                       column's heading ("FER2013 %")
    reader             the core of `fer prepare NAME SRC`: reader(src, out=DIR, **options)

Everything that depends on which dataset it is asks here (get / find), so adding a dataset is
one register() call. A prepared directory whose manifest names no registered dataset still
works: its split rule is read from the splits it has (GENERIC_SPLITS), it trains with
FER2013's optimizer, and it has no column in the paper's tables.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from fercli.data.ingest import PrepareResult, prepare_ckplus, prepare_fer2013
from fercli.data.prepared import CKPLUS_CLASSES, FER2013_CLASSES, PreparedDataset, load_prepared
from fercli.errors import FerError

# The selection split carved from `train` when the data ships no selection split of its own.
HOLDOUT_SPLIT = "train_holdout"


@dataclass(frozen=True)
class FixedSplits:
    """Named splits that come with the data: train on `train`, select checkpoints on
    `selection`, report `report`. selection None: the data has no selection split, so a fixed
    `holdout` fraction of train (seeded, the same every run) is held out as HOLDOUT_SPLIT."""

    train: str
    selection: str | None
    report: str
    holdout: float = 0.1
    kfold: ClassVar[bool] = False

    @property
    def selection_name(self) -> str:
        return self.selection or HOLDOUT_SPLIT

    def fits(self, splits: set[str]) -> bool:
        return self.train in splits and (self.selection or self.report) in splits


@dataclass(frozen=True)
class SubjectFolds:
    """Subject-independent k-fold on the prepared `fold` column (grouped by the S### subject
    id): test = fold K (reported), selection = fold K+1 (mod k), the rest trains."""

    min_folds: int = 3
    kfold: ClassVar[bool] = True

    def fits(self, splits: set[str]) -> bool:
        return "train" not in splits

    def selection_name(self, fold: int, k: int) -> str:
        return f"fold{(fold + 1) % k}"

    def report_name(self, fold: int) -> str:
        return f"fold{fold}"


SplitRule = FixedSplits | SubjectFolds

# FER2013's challenge CSV keeps Training / PublicTest / PrivateTest; its image-folder release
# merges the two test sets into `test`.
FER2013_SPLITS: tuple[SplitRule, ...] = (FixedSplits("train", "public_test", "private_test"),
                                         FixedSplits("train", None, "test"))
# A prepared directory of an unregistered dataset: whichever of these its splits fit, in order.
GENERIC_SPLITS: tuple[SplitRule, ...] = (*FER2013_SPLITS, SubjectFolds())


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str
    classes: tuple[str, ...]
    splits: tuple[SplitRule, ...]
    paper_optimizer: str  # a fercli.train.optim.OPTIMIZER_NAMES name
    paper_column: str  # the dataset's key in fercli.paper's tables
    paper_label: str  # that column's heading
    reader: Callable[..., PrepareResult]
    aliases: tuple[str, ...] = ()


_REGISTRY: dict[str, DatasetSpec] = {}


def _keys(spec: DatasetSpec) -> list[str]:
    return [n.lower() for n in (spec.name, *spec.aliases)]


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset; its name and aliases must be new."""
    taken = [k for k in _keys(spec) if k in _index()]
    if taken:
        raise FerError(f"dataset {spec.name}: {', '.join(taken)} already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _REGISTRY.pop(get(name).name)


def _index() -> dict[str, DatasetSpec]:
    return {k: s for s in _REGISTRY.values() for k in _keys(s)}


def names() -> list[str]:
    """The registered datasets' names (not their aliases), in registration order."""
    return list(_REGISTRY)


def specs() -> list[DatasetSpec]:
    return list(_REGISTRY.values())


def find(name: str | None) -> DatasetSpec | None:
    """The dataset called `name` (or one of its aliases, any case), else None."""
    return _index().get(str(name or "").lower())


def get(name: str) -> DatasetSpec:
    spec = find(name)
    if spec is None:
        raise FerError(f"unknown dataset {name!r}: known datasets are {', '.join(names())}")
    return spec


def paper_optimizer(name: str | None) -> str:
    """The paper's optimizer for dataset `name`; an unregistered one gets FER2013's."""
    return (find(name) or FER2013).paper_optimizer


def paper_label(column: str) -> str:
    """The heading of the paper's table column `column` (its dataset's paper_label)."""
    spec = next((s for s in _REGISTRY.values() if s.paper_column == column), None)
    return spec.paper_label if spec else column


def split_rule(name: str | None, splits: set[str], where: str) -> SplitRule:
    """Which of the dataset's split rules its prepared `splits` fit (the first that does)."""
    spec = find(name)
    rules = spec.splits if spec else GENERIC_SPLITS
    for rule in rules:
        if rule.fits(splits):
            return rule
    wanted = "/".join(r.selection or r.report for r in rules if isinstance(r, FixedSplits))
    if "train" in splits and wanted:
        raise FerError(f"{where}: has a train split but no {wanted} split to select on")
    raise FerError(f"{where}: its splits ({', '.join(sorted(splits))}) fit none of {spec.name if spec else 'its'}'s "
                   "split rules")


def dataset_split_rule(ds: PreparedDataset) -> SplitRule:
    return split_rule(ds.name, set(ds.split.tolist()), str(ds.path))


# --------------------------------------------------------------------------- where datasets live


def data_root() -> Path:
    """`$FER_DATA_DIR` if set, else `./data`."""
    env = os.environ.get("FER_DATA_DIR")
    return Path(env) if env else Path("data")


def default_dataset_dir(name: str) -> Path:
    return data_root() / get(name).folder


def resolve_dataset(ref: str | Path) -> Path:
    """Map a registered dataset's name (or alias) or a directory path to a prepared directory."""
    p = Path(ref)
    if find(str(ref)) is not None and not p.is_dir():
        p = default_dataset_dir(str(ref))
        if not p.exists():
            raise FerError(
                f"dataset {ref} is not prepared at {p}: run `fer prepare {ref} SRC` first "
                f"(or set FER_DATA_DIR)"
            )
    if not p.exists():
        raise FerError(f"dataset {p} does not exist (give {', '.join(names())} or a prepared directory)")
    if p.is_file():
        raise FerError(f"dataset {p} is a file; expected a prepared dataset directory")
    return p


def load_dataset(ref: str | Path, verify: bool = True) -> PreparedDataset:
    """load_prepared for a dataset name or a directory."""
    return load_prepared(resolve_dataset(ref), verify=verify)


def prepare(name: str, src: Path | str, *, out: Path | str | None = None, **options: Any) -> PrepareResult:
    """`fer prepare NAME SRC`: the dataset's reader, writing to `out` or its default folder."""
    return get(name).reader(src, out=Path(out) if out is not None else default_dataset_dir(name), **options)


FER2013 = register(DatasetSpec(
    name="fer2013", folder="fer2013", classes=FER2013_CLASSES, splits=FER2013_SPLITS,
    paper_optimizer="adamw-gc", paper_column="fer2013", paper_label="FER2013 %", reader=prepare_fer2013,
))
# CK+48 is the same dataset as the raw CK+ release (its face crops), so it shares the entry.
CKPLUS = register(DatasetSpec(
    name="ck+", folder="ckplus", classes=CKPLUS_CLASSES, splits=(SubjectFolds(),),
    paper_optimizer="adam-gc", paper_column="ck+", paper_label="CK+ %", reader=prepare_ckplus,
    aliases=("ckplus", "ck+48", "ckplus48"),
))
