"""Export a trained model to a safe, compact `.npz` and load it back.

The exported file is a plain NumPy archive (no pickle, nothing that executes on load):

    <name>.npz          every state-dict tensor under its state-dict key, float tensors as
                        float16 (or float32 with dtype="float32"), integer buffers such as
                        BatchNorm's num_batches_tracked kept as int64, plus
                        __meta__   uint8 array holding UTF-8 JSON: format, model spec,
                                   classes, image size, training command, PrivateTest
                                   accuracy (when the run has metrics.json), device,
                                   dataset sha256, fercli version, the calibration
                                   temperature and its split (when fitted), ...
    <name>.npz.json     the same JSON as a human-readable sidecar (informative only; the
                        loader trusts only __meta__ inside the archive; fercli.export.sidecar)

With `max_shard_mb` the archive's bytes are split into `<name>.npz.part0, .part1, ...` of at
most that size and an index `<name>.npz.index.json` lists each part's size and sha256 and
the whole archive's sha256 (files come back from a GPU machine at ≤ 16 MB each). The
loader reassembles and verifies the parts before reading anything.

Every write is atomic (temp file + rename). Every load error is a one-line FerError that
names the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fercli import __version__
from fercli.errors import FerError
from fercli.export.sidecar import sidecar_path
from fercli.files import (
    SHARD_INDEX_SUFFIX,
    SHARD_PART_SUFFIX,
    atomic_write_many,
    json_bytes,
    read_json,
    read_shards,
    shard_files,
)
from fercli.model.checkpoints import load_checkpoint, model_from_checkpoint
from fercli.model.locate import locate
from fercli.model.networks import model_from_spec
from fercli.provenance import code_version
from fercli.vision.faces import FACE_SIZE

EXPORT_FORMAT = "fercli-export-v1"
META_KEY = "__meta__"
INDEX_SUFFIX = SHARD_INDEX_SUFFIX
PART_SUFFIX = SHARD_PART_SUFFIX
DTYPES = {"float16": np.float16, "float32": np.float32}
# npz members are named "<key>.npy"; keys must be plain so nothing odd reaches the file system.
_SAFE_KEY_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


# --------------------------------------------------------------------------- export


def _checkpoint_ref(src: Path | str, fmt: str) -> tuple[Path, Path | None]:
    """(checkpoint file, its run dir or None) of a run directory or a .pt file, through the one
    resolver (fercli.model.locate: the same references and messages as every command)."""
    ref = locate(src, "SOURCE")
    if ref.kind != "checkpoint":
        what = "an ONNX graph" if ref.kind == "onnx" else "an exported model"
        other = " (--format onnx converts an exported .npz)" if ref.kind == "exported" else ""
        raise FerError(f"SOURCE {src} is {what}: --format {fmt} exports a run directory or a .pt checkpoint{other}")
    run_dir = ref.path.parent if (ref.path.parent / "config.json").is_file() else None
    return ref.path, run_dir


def _state_arrays(state: dict[str, torch.Tensor], dtype: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """State dict -> numpy arrays: floats cast to `dtype`, integers kept (int64)."""
    arrays: dict[str, np.ndarray] = {}
    kept_fp32: list[str] = []
    target = DTYPES[dtype]
    for key, t in state.items():
        if key == META_KEY or not key or set(key) - _SAFE_KEY_CHARS:
            raise FerError(f"state-dict key {key!r} cannot be exported (unexpected characters)")
        t = t.detach().to("cpu").contiguous()
        if t.is_floating_point():
            a32 = t.float().numpy()
            a = a32.astype(target)
            # fp16 overflows past 65504: keep such a tensor (a BatchNorm variance, say) in fp32.
            if target is np.float16 and not np.array_equal(np.isfinite(a), np.isfinite(a32)):
                a = a32
                kept_fp32.append(key)
        elif t.dtype == torch.bool:
            a = t.numpy().astype(np.bool_)
        else:
            a = t.to(torch.int64).numpy()
        arrays[key] = np.array(a, order="C", copy=True)  # (ascontiguousarray would make 0-d 1-d)
    return arrays, kept_fp32


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A reproducible .npz (fixed member timestamps and order, stored, no pickle) in memory."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, arr, allow_pickle=False)
    return buf.getvalue()


def _checkpoint_meta(src: Path, dtype: str, fmt: str = "npz") -> tuple[nn.Module, dict[str, Any]]:
    """(model, provenance block) of a run directory's best.pt or a checkpoint file."""
    ck_path, run_dir = _checkpoint_ref(src, fmt)
    ckpt = load_checkpoint(ck_path)
    model = model_from_checkpoint(ckpt, ck_path)  # proves the weights fit the spec before export
    config = ckpt.get("config") or {}
    run_info = _run_record(run_dir, "config.json", "run config")
    metrics = _run_record(run_dir, "metrics.json", "metrics record")
    test_acc = None
    if metrics and isinstance(metrics.get("accuracy"), (int, float)):
        test_acc = {"split": metrics.get("split"), "accuracy": float(metrics["accuracy"]),
                    "macro_f1": metrics.get("macro_f1"), "tta": metrics.get("tta"),
                    "num_samples": metrics.get("num_samples")}
    meta: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "model_spec": dict(ckpt["model_spec"]),
        "classes": list(ckpt["classes"]),
        "image_size": int(ckpt["model_spec"]["image_size"]),  # model_from_checkpoint checked the spec
        "input": _input_text(int(ckpt["model_spec"]["image_size"])),
        "dtype": dtype,
        "kept_float32": [],
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        # `fer train` records the command line that reproduces it (fercli.train.config.train_command)
        "training_command": ckpt.get("training_command") or (run_info or {}).get("training_command"),
        "train_config": config,
        "best_epoch": (ckpt.get("best") or {}).get("epoch"),
        "best_val_acc": (ckpt.get("best") or {}).get("val_acc"),
        "test_metrics": test_acc,
        "private_test_accuracy": test_acc["accuracy"] if test_acc and test_acc["split"] == "private_test" else None,
        # the temperature fitted on the selection split (fercli.evaluation.calibrate), or None
        "calibration": ckpt.get("calibration"),
        "device": (run_info or {}).get("device"),
        "dataset_name": ckpt.get("dataset_name"),
        "dataset_sha256": ckpt.get("dataset_sha256"),
        "trained_with_fercli": ckpt.get("fercli_version"),
        # Two versions: the code that trained the weights (from the checkpoint itself, else
        # the run's config.json) and the code that wrote this file.
        "code_version": ckpt.get("code_version") or (run_info or {}).get("code_version"),
        "exported_with_code_version": code_version(),
        "fercli_version": __version__,
        "source_checkpoint": str(ck_path),
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return model, meta


def export_meta(src: Path | str, dtype: str) -> tuple[nn.Module, dict[str, Any]]:
    """(model, provenance block) of any export source: a run directory, a .pt checkpoint, or
    an already exported .npz (its recorded provenance is kept; this export is stamped)."""
    ref = locate(src, "SOURCE")
    if ref.kind == "exported":
        model, info = load_exported(ref.path)
        meta = {k: v for k, v in info.items() if k not in ("path", "bytes")}
        meta.update(dtype=dtype, source_model=str(src), exported_with_code_version=code_version(),
                    exported=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        return model, meta
    return _checkpoint_meta(Path(src), dtype, "onnx")


def export_model(
    src: Path | str,
    out_path: Path | str,
    dtype: str = "float16",
    extra_info: dict[str, Any] | None = None,
    max_shard_mb: float | None = None,
) -> dict[str, Any]:
    """Export a run directory's best.pt (or a checkpoint file) to `out_path` (.npz).

    Returns the metadata written to __meta__ plus where the file(s) went and their sizes.
    """
    if dtype not in DTYPES:
        raise FerError(f"--dtype {dtype!r} is not one of: {', '.join(DTYPES)}")
    if max_shard_mb is not None and not (max_shard_mb > 0 and math.isfinite(max_shard_mb)):
        raise FerError(f"--max-shard-mb must be a positive number, got {max_shard_mb}")
    src, out_path = Path(src), Path(out_path)
    if out_path.suffix != ".npz":
        raise FerError(f"--out {out_path}: the exported model must be a .npz file")
    model, meta = _checkpoint_meta(src, dtype)
    state = {k: v for k, v in model.state_dict().items()}
    arrays, kept_fp32 = _state_arrays(state, dtype)
    meta["kept_float32"] = kept_fp32
    meta.update(extra_info or {})
    return write_archive(arrays, meta, out_path, max_shard_mb)


def write_archive(arrays: dict[str, np.ndarray], meta: dict[str, Any], out_path: Path,
                  max_shard_mb: float | None) -> dict[str, Any]:
    """The .npz (weights + __meta__), whole or as ≤ max_shard_mb parts with an index written
    last, and the <name>.npz.json sidecar; every file atomically. Returns meta plus where it all went."""
    arrays = {**arrays, META_KEY: np.frombuffer(json.dumps(meta, sort_keys=False, default=str).encode("utf-8"),
                                                dtype=np.uint8)}
    data = _npz_bytes(arrays)
    digest = hashlib.sha256(data).hexdigest()

    # Every file of the export is written all or nothing (atomic_write_many): a full disk
    # halfway through the shards leaves the previous export whole, index and sidecar included.
    files: list[tuple[Path, bytes]] = []
    if max_shard_mb is None:
        files.append((out_path, data))
    else:
        files += shard_files(out_path, data, max(1, int(max_shard_mb * 1024 * 1024)),
                             EXPORT_FORMAT + "-shards", {"meta": meta})
    written = [str(p) for p, _ in files]
    sidecar = sidecar_path(out_path)
    atomic_write_many([*files, (sidecar, json_bytes(meta))])
    return {**meta, "path": str(out_path), "sharded": max_shard_mb is not None, "files": written,
            "sidecar": str(sidecar), "bytes": len(data), "sha256": digest}


def _check_copy_target(src: Path, out_path: Path, over_source: str) -> None:
    """A re-packed copy of `src` goes to another .npz path; `over_source` is the refusal when
    `out_path` is `src` itself (the input is never modified)."""
    if out_path.suffix != ".npz":
        raise FerError(f"--out {out_path}: the exported model must be a .npz file")
    if out_path.resolve() == Path(str(src).removesuffix(INDEX_SUFFIX)).resolve():
        raise FerError(over_source)


def amend_metadata(src: Path | str, out_path: Path | str, changes: dict[str, Any], why: str, how: str,
                   max_shard_mb: float | None = 15.0) -> dict[str, Any]:
    """Re-pack an exported model with some metadata fields corrected (e.g. the code_version a
    device call could not know). The weight arrays are copied unchanged; each change appends an
    entry to `provenance_corrections` naming the recorded value, the new one, why and how, and
    the original archive's sha256. `src` is never modified (write to another path)."""
    src, out_path = Path(src), Path(out_path)
    _check_copy_target(src, out_path, f"{out_path}: write the amended model beside the original, not over it")
    arrays, meta, data = _read_archive(src)
    original = hashlib.sha256(data).hexdigest()
    today = datetime.now(timezone.utc).date().isoformat()
    for field, value in changes.items():
        meta.setdefault("provenance_corrections", []).append({
            "date": today, "field": field, "recorded": meta.get(field), "corrected_to": value,
            "why": why, "how": how, "original_archive_sha256": original})
        meta[field] = value
    return write_archive(arrays, meta, out_path, max_shard_mb)


def _run_record(run_dir: Path | None, name: str, what: str) -> dict[str, Any] | None:
    """A run directory's JSON record, or None when there is no run directory or no such file
    (a checkpoint without `fer evaluate` metrics); an unreadable one is an error naming it."""
    if run_dir is None or not (run_dir / name).is_file():
        return None
    return read_json(run_dir / name, what)


def with_metadata(src: Path | str, out_path: Path | str, updates: dict[str, Any],
                  max_shard_mb: float | None = None) -> dict[str, Any]:
    """A copy of an exported model with `updates` set in its metadata (e.g. the calibration a
    model gained after export). The weight arrays are copied unchanged; `src` is never
    modified (write to another path)."""
    src, out_path = Path(src), Path(out_path)
    _check_copy_target(src, out_path, f"--out {out_path}: write the new model beside {src}, not over it")
    arrays, meta, _ = _read_archive(src)
    meta.update(updates)
    return write_archive(arrays, meta, out_path, max_shard_mb)


def _input_text(image_size: int) -> str:
    """What the model expects, from its own spec: FACE_SIZE face crops (the FER2013 format, the
    same crop as in training), which the model itself resizes to its input size."""
    resize = "" if image_size == FACE_SIZE else f"; the model resizes it to {image_size}x{image_size} itself"
    return f"greyscale face crop, uint8, {FACE_SIZE}x{FACE_SIZE} (INTER_AREA) as in training{resize}"


# --------------------------------------------------------------------------- load




def _read_archive(path: Path | str) -> tuple[dict[str, np.ndarray], dict[str, Any], bytes]:
    """An exported .npz (or its shard index) -> (weight arrays, __meta__ dict, the archive's
    bytes), with one-line errors for missing, truncated, corrupt or foreign files."""
    path = Path(path)
    if path.name.endswith(INDEX_SUFFIX):
        index_path, path = path, Path(str(path)[: -len(INDEX_SUFFIX)])
    else:
        index_path = Path(f"{path}{INDEX_SUFFIX}")
    if path.is_file():
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise FerError(f"{path}: cannot read model file ({exc.strerror or exc})") from None
    elif index_path.is_file():
        data = read_shards(index_path)
    elif path.is_dir():
        raise FerError(f"{path} is a directory; expected an exported model .npz")
    else:
        raise FerError(f"model file {path} does not exist")
    if not data:
        raise FerError(f"{path}: empty file (0 bytes), not an exported model")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            names = list(z.files)
            if META_KEY not in names:
                raise FerError(f"{path}: not a fercli exported model (no {META_KEY} array)")
            arrays = {k: z[k] for k in names}
    except FerError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise FerError(f"{path}: truncated or corrupt model file ({type(exc).__name__}: {first})") from None
    except Exception as exc:  # zlib/struct errors on damaged members
        raise FerError(f"{path}: truncated or corrupt model file ({type(exc).__name__})") from None
    meta_arr = arrays.pop(META_KEY)
    try:
        if meta_arr.dtype != np.uint8 or meta_arr.ndim != 1:
            raise ValueError("wrong dtype")
        meta = json.loads(meta_arr.tobytes().decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError):
        raise FerError(f"{path}: unreadable {META_KEY} metadata (expected UTF-8 JSON)") from None
    if meta.get("format") != EXPORT_FORMAT:
        raise FerError(f"{path}: unsupported export format {meta.get('format')!r} (expected {EXPORT_FORMAT})")
    return arrays, meta, data


def load_exported(path: Path | str) -> tuple[nn.Module, dict[str, Any]]:
    """Load an exported model (.npz, or its sharded form) -> (model in eval mode, info).

    np.load with allow_pickle=False: nothing in the file is executed. The architecture is
    rebuilt from the spec and the weights are loaded strictly, cast to float32.
    """
    arrays, meta, data = _read_archive(path)
    path = Path(str(path).removesuffix(INDEX_SUFFIX))
    classes = meta.get("classes")
    spec = meta.get("model_spec")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise FerError(f"{path}: metadata has no class list")
    model = model_from_spec(spec, empty=True)  # FerError on a bad spec; every weight is loaded below
    if spec.get("num_classes") != len(classes):
        raise FerError(f"{path}: spec says {spec.get('num_classes')} classes but {len(classes)} are named")
    expected = model.state_dict()
    missing = sorted(expected.keys() - arrays.keys())
    unexpected = sorted(arrays.keys() - expected.keys())
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise FerError(f"{path}: weights do not fit model {spec.get('name')}: {len(missing)} missing, "
                       f"{len(unexpected)} unexpected arrays (e.g. {first!r})")
    state: dict[str, torch.Tensor] = {}
    for key, ref in expected.items():
        a = arrays[key]
        if tuple(a.shape) != tuple(ref.shape):
            raise FerError(f"{path}: array {key!r} has shape {tuple(a.shape)}, model {spec.get('name')} "
                           f"expects {tuple(ref.shape)}")
        if ref.is_floating_point():
            if a.dtype.kind != "f":
                raise FerError(f"{path}: array {key!r} is {a.dtype}, expected floating point")
            state[key] = torch.from_numpy(a.astype(np.float32))
        else:
            if a.dtype.kind not in "iub":
                raise FerError(f"{path}: array {key!r} is {a.dtype}, expected integers")
            state[key] = torch.from_numpy(a.astype(np.int64)).to(ref.dtype)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise FerError(f"{path}: weights do not fit model {spec.get('name')}: "
                       f"{str(exc).strip().splitlines()[0][:160]}") from None
    model.eval()
    info = {**meta, "path": str(path), "bytes": len(data)}
    return model, info
