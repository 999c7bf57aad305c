"""Temperature scaling: the exact math (ECE, MCE, NLL, Brier, the fit), the guard that keeps
the report split out of the fit, T recorded by `fer train` / `fer calibrate`, and T carried
through export -> ONNX -> predict. The shipped model keeps every label with its T."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fercli.cli import app
from fercli.data import resident
from fercli.data.prepared import load_prepared
from fercli.errors import FerError
from fercli.evaluation import calibrate as calibrate_mod
from fercli.evaluation import calibration as cal
from fercli.infer.classifier import make_classifier
from fercli.infer.config import PredictConfig
from fercli.infer.torch_backend import FaceClassifier
from fercli.model import inference
from fercli.model import temperature as temp
from fercli.model.checkpoints import load_checkpoint
from tests.test_engine import make_fer_like, tiny_cfg
from tests.test_export import CLASSES, make_run

runner = CliRunner()


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- exact math


def _hand_example() -> tuple[np.ndarray, np.ndarray]:
    # top-1 confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.55 (right)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.55, 0.45]])
    return probs, np.array([0, 1, 0, 0])


def test_ece_mce_nll_brier_match_a_hand_computed_example() -> None:
    p, y = _hand_example()
    # 15 bins of width 1/15: 0.9 falls in (13/15, 14/15]; 0.6 = 9/15 closes (8/15, 9/15], as
    # does 0.55. Bin 13: accuracy 1/2, confidence 0.9 -> gap 0.4; bin 8: accuracy 1,
    # confidence 0.575 -> gap 0.425. ECE = (2 * 0.4 + 2 * 0.425) / 4.
    bins = cal.reliability_bins(p, y)
    assert [b["count"] for b in bins] == [0] * 8 + [2] + [0] * 4 + [2, 0]
    assert cal.ece(p, y) == pytest.approx(0.4125, abs=1e-12)
    assert cal.mce(p, y) == pytest.approx(0.425, abs=1e-12)
    assert cal.nll(p, y) == pytest.approx(-(np.log(0.9) + np.log(0.1) + np.log(0.6) + np.log(0.55)) / 4, abs=1e-12)
    # multi-class Brier: sum over classes of (p - onehot)^2, averaged over faces
    assert cal.brier(p, y) == pytest.approx((0.02 + 1.62 + 0.32 + 0.405) / 4, abs=1e-12)
    m = cal.calibration_metrics(p, y)
    assert m["accuracy"] == 0.75 and m["mean_confidence"] == pytest.approx(0.7375)
    # perfectly calibrated bins give ECE 0: confidence 0.5 (two classes), half of them right
    assert cal.ece(np.full((4, 2), 0.5), np.array([0, 1, 0, 1])) == 0.0


def _calibrated_split(n: int = 20000, c: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is exactly the probability the labels are drawn from."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, (n, c))
    p = temp.softmax(z)
    y = (rng.random((n, 1)) > p.cumsum(axis=1)).sum(axis=1)
    return z, y


def test_fitted_temperature_undoes_overconfidence_and_lowers_nll() -> None:
    z, y = _calibrated_split()
    over = 3.0 * z  # the same ranking, three times too sharp: overconfident
    t = temp.fit_temperature(over, y)
    assert t == pytest.approx(3.0, rel=0.05)
    before, after = temp.softmax(over), temp.softmax(over, t)
    assert cal.nll(after, y) < cal.nll(before, y) - 0.1
    assert cal.ece(after, y) < 0.02 < 0.1 < cal.ece(before, y)
    assert np.array_equal(before.argmax(1), after.argmax(1))  # labels never change
    # T is the minimum of the NLL, not merely an improvement
    for f in (0.99, 1.01):
        assert cal.nll(temp.softmax(over, t * f), y) > cal.nll(after, y)
    # underconfident logits get T < 1
    assert temp.fit_temperature(0.5 * z, y) == pytest.approx(0.5, rel=0.05)


def test_fit_is_deterministic_shift_invariant_and_bounded() -> None:
    z, y = _calibrated_split(n=2000, seed=1)
    t = temp.fit_temperature(2 * z, y)
    assert temp.fit_temperature(2 * z, y) == t
    shift = np.random.default_rng(2).normal(0, 50, (len(y), 1))
    assert temp.fit_temperature(2 * z + shift, y) == pytest.approx(t, rel=1e-9)  # log-probs fit alike
    # labels the logits always get right: the sharper the better, down to the lower bound
    sep = np.eye(3)[np.arange(30) % 3] * 5.0
    assert temp.fit_temperature(sep, np.arange(30) % 3) == temp.TEMPERATURE_BOUNDS[0]
    with pytest.raises(FerError, match="NaN"):
        temp.fit_temperature(np.array([[np.nan, 0.0]]), np.array([0]))
    with pytest.raises(FerError, match="N > 0"):
        temp.fit_temperature(np.zeros((0, 3)), np.zeros(0))


def test_temperature_of_metadata() -> None:
    assert temp.temperature_of(None) == 1.0 and temp.temperature_of({"calibration": None}) == 1.0
    assert temp.temperature_of({"calibration": {"temperature": 1.5, "split": "public_test"}}) == 1.5
    for bad in (0, -1.0, float("nan"), float("inf"), "2", True):
        with pytest.raises(FerError, match="temperature"):
            temp.temperature_of({"calibration": {"temperature": bad}})


def test_temperature_scaled_divides_logits_and_keeps_labels() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48 * 48, 7)).eval()
    x = torch.rand(5, 1, 48, 48)
    with torch.no_grad():
        assert torch.allclose(inference.TemperatureScaled(net, 2.5)(x), net(x) / 2.5)
    faces = (np.random.default_rng(0).random((6, 48, 48)) * 255).astype(np.uint8)
    plain = FaceClassifier(net, CLASSES, torch.device("cpu")).predict_proba(faces)
    warm = FaceClassifier(net, CLASSES, torch.device("cpu"), temperature=2.5).predict_proba(faces)
    with torch.no_grad():
        logits = net(torch.from_numpy(faces).unsqueeze(1).float() / 255).double().numpy()
    np.testing.assert_allclose(warm, temp.softmax(logits, 2.5), atol=1e-6)
    np.testing.assert_allclose(plain, temp.softmax(logits), atol=1e-6)  # T = 1: unchanged
    assert np.array_equal(plain.argmax(1), warm.argmax(1))


# ----------------------------------------------------------------------------- the guard


def test_fitting_never_reads_the_report_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = load_prepared(make_fer_like(tmp_path / "fer"))
    plan = resident.plan_splits(ds, None)
    model = make_run(tmp_path / "run")
    seen: list[set[int]] = []
    real = resident.to_device

    def spy(d, idx, device):  # type: ignore[no-untyped-def]
        seen.append(set(np.asarray(idx).tolist()))
        return real(d, idx, device)

    monkeypatch.setattr(calibrate_mod, "to_device", spy)
    for bad in ("private_test", "train"):
        with pytest.raises(FerError, match="report split" if bad == "private_test" else "selection split"):
            calibrate_mod.fit_on_split(model, ds, plan, bad, torch.device("cpu"))
    assert seen == []  # refused before a single row was read
    rec = calibrate_mod.fit_on_split(model, ds, plan, "public_test", torch.device("cpu"))
    assert seen == [set(plan.val.tolist())] and not seen[0] & set(plan.test.tolist())
    assert rec["split"] == "public_test" and rec["num_samples"] == 12 and rec["dataset_sha256"] == ds.sha256
    # a CK+ plan: the test fold is refused, the selection fold K+1 is used
    ck = resident.SplitPlan(plan.train, plan.val, plan.test, "fold2", "fold1")
    with pytest.raises(FerError, match="fold1: it is the report split"):
        calibrate_mod.guard_split("fold1", ck)


# ----------------------------------------------------------------------------- train, export, ONNX, predict


@pytest.mark.slow
def test_training_records_t_fitted_on_the_selection_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fercli.evaluation import evaluate as evaluation
    from fercli.train import runs

    # fp32 throughout (no bf16 autocast on AVX-512 CPUs), so torch and the checks below agree
    monkeypatch.setattr(evaluation, "autocast_dtype", lambda device, precision: None)
    ds_path = make_fer_like(tmp_path / "fer")
    (res,) = runs.train(tiny_cfg(ds_path, tmp_path / "run", epochs=1, precision="fp32"))
    ckpt = load_checkpoint(res.run_dir / "best.pt")
    rec = ckpt["calibration"]
    assert rec["split"] == "public_test" and rec["num_samples"] == 12
    summary = json.loads((res.run_dir / "train_summary.json").read_text())
    assert summary["calibration"]["temperature"] == rec["temperature"]
    # the recorded T is the NLL minimum of the selected weights on PublicTest rows
    from fercli.model.checkpoints import model_from_checkpoint

    ds = load_prepared(ds_path)
    rows = ds.indices("public_test")
    model = model_from_checkpoint(ckpt).eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(ds.images[rows]).unsqueeze(1).float() / 255).double().numpy()
    fitted = temp.fit_temperature(logits, ds.labels[rows])
    if fitted in temp.TEMPERATURE_BOUNDS:  # 12 faces after one tiny epoch: the split may not pin T down
        assert rec["temperature"] == 1.0 and f"T = {fitted:g}" in rec["unidentifiable"]
    else:
        assert rec["temperature"] == pytest.approx(fitted, rel=1e-6) and "unidentifiable" not in rec
    # `fer evaluate` uses the recorded T and reports both sides; reliability.png beside confusion.png
    r = runner.invoke(app, ["evaluate", str(res.run_dir), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)["calibration"]
    assert m["temperature"] == rec["temperature"] and m["temperature_split"] == "public_test"
    assert m["temperature_source"] == "recorded in the model" and m["argmax_identical"] is True
    assert set(m["before"]) >= {"ece", "mce", "nll", "brier"} and m["bins"] == 15
    assert (res.run_dir / "reliability.png").stat().st_size > 1000 and (res.run_dir / "confusion.png").is_file()
    lo, hi = m["after"]["ece_ci95"]
    assert lo <= m["after"]["ece"] <= hi
    table = runner.invoke(app, ["evaluate", str(res.run_dir), "--device", "cpu"])
    assert table.exit_code == 0 and "ECE % (95% CI)" in table.stdout
    assert f"{100 * m['after']['ece']:.2f} ({100 * lo:.2f}–{100 * hi:.2f})" in table.stdout
    mid, p95 = m["after"]["ece_if_calibrated"]
    assert 0 <= mid <= p95 and f"{100 * mid:.2f} / {100 * p95:.2f}" in table.stdout
    # with TTA, T divides each view's logits before the views are averaged, as fer predict does
    flip = evaluation.evaluate_target(evaluation.EvaluateConfig(target=str(res.run_dir), tta="flip", device="cpu", write=False))
    rows = ds.indices("private_test")
    want = FaceClassifier(model, CLASSES, torch.device("cpu"), temperature=rec["temperature"]).predict_proba(
        ds.images[rows], tta="flip")
    assert flip["calibration"]["after"]["nll"] == pytest.approx(cal.nll(want, ds.labels[rows]), rel=1e-6)


def _face_batch() -> np.ndarray:
    from tests.fixtures import face_image

    base = face_image(48)
    return np.stack([np.roll(base, k, axis=1) for k in range(-6, 7, 2)] + [base[:, ::-1]])


@pytest.mark.slow
def test_t_survives_export_onnx_and_predict(tmp_path: Path) -> None:
    """T in best.pt -> .npz metadata -> ONNX graph; each backend's probabilities are
    softmax(logits / T), and a model without T gives softmax(logits) as before."""
    from fercli.export.npz_format import export_model, load_exported
    from fercli.export.onnx_format import export_onnx
    from fercli.export.onnx_runtime import OnnxClassifier

    run = tmp_path / "run"
    model = make_run(run)
    faces = _face_batch()
    with torch.no_grad():
        logits = model(torch.from_numpy(faces).unsqueeze(1).float() / 255).double().numpy()
    record = {"temperature": 2.75, "split": "public_test"}
    calibrate_mod.write_checkpoint_calibration(run / "best.pt", record)
    export_model(run, tmp_path / "m.npz", dtype="float32")
    assert load_exported(tmp_path / "m.npz")[1]["calibration"] == record
    export_onnx(tmp_path / "m.npz", tmp_path / "m.onnx", dtype="float32")
    want = temp.softmax(logits, 2.75)
    assert not np.allclose(want, temp.softmax(logits), atol=1e-3)  # T visibly changes them
    onnx_clf = OnnxClassifier(tmp_path / "m.onnx")
    assert onnx_clf.meta["calibration"]["temperature"] == 2.75
    np.testing.assert_allclose(onnx_clf.predict_proba(faces), want, atol=1e-5)
    for ref, backend in ((tmp_path / "m.npz", "torch"), (tmp_path / "m.npz", "onnx"), (run, "torch"),
                         (tmp_path / "m.onnx", "auto")):
        clf, _, _ = make_classifier(PredictConfig(inputs=(), model=str(ref), backend=backend, device="cpu",
                                                  precision="fp32"))
        np.testing.assert_allclose(clf.predict_proba(faces), want, atol=1e-5, err_msg=f"{ref} {backend}")
    # `fer predict --model m.onnx` on one face image: the printed probabilities are calibrated
    import cv2

    cv2.imwrite(str(tmp_path / "face.png"), faces[0])
    r = runner.invoke(app, ["predict", str(tmp_path / "face.png"), "--model", str(tmp_path / "m.onnx"),
                            "--detector", "none", "--tta", "none", "--intensity", "none", "--json"])
    assert r.exit_code == 0, r.output
    probs = json.loads(r.stdout)[0]["faces"][0]["probs"]
    np.testing.assert_allclose([probs[c] for c in CLASSES], want[0], atol=1e-4)
    # the Python API (and so `fer serve`, which holds one Recognizer) gives the same calibrated probabilities
    import fercli

    (face,) = fercli.Recognizer(tmp_path / "m.onnx", detector="none", precision="fp32", tta="none",
                                intensity="none").predict(tmp_path / "face.png")
    np.testing.assert_allclose([face.probs[c] for c in CLASSES], want[0], atol=1e-4)
    # without T: exactly the uncalibrated softmax
    plain = tmp_path / "plain"
    make_run(plain)
    clf, _, _ = make_classifier(PredictConfig(inputs=(), model=str(plain), backend="torch", device="cpu"))
    np.testing.assert_allclose(clf.predict_proba(faces), temp.softmax(logits), atol=1e-6)


@pytest.mark.slow
def test_calibrate_command(tmp_path: Path) -> None:
    ds_path = make_fer_like(tmp_path / "fer")
    run = tmp_path / "run"
    make_run(run)
    r = runner.invoke(app, ["calibrate", str(run), "--dataset", str(ds_path), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    t = out["calibration"]["temperature"]
    assert out["calibration"]["split"] == "public_test" and out["written"] == [str(run / "best.pt")]
    assert load_checkpoint(run / "best.pt")["calibration"]["temperature"] == t
    from fercli.export.npz_format import export_model, load_exported

    export_model(run, tmp_path / "m.npz", dtype="float32")  # the same weights: the same T
    before = (tmp_path / "m.npz").read_bytes()
    bad = runner.invoke(app, ["calibrate", str(tmp_path / "m.npz"), "--dataset", str(ds_path), "--device", "cpu"])
    assert bad.exit_code != 0 and "--out" in bad.stderr and "Traceback" not in bad.output
    ok = runner.invoke(app, ["calibrate", str(tmp_path / "m.npz"), "--dataset", str(ds_path), "--device", "cpu",
                             "--out", str(tmp_path / "c.npz")])
    assert ok.exit_code == 0, ok.output
    assert "T = " in ok.stdout and "public_test" in ok.stdout
    assert (tmp_path / "m.npz").read_bytes() == before  # the input is never modified
    assert load_exported(tmp_path / "c.npz")[1]["calibration"]["temperature"] == pytest.approx(t, rel=1e-6)


@pytest.mark.slow
def test_kfold_reports_each_folds_t_and_the_pooled_calibration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CK+ k-fold root: each fold's T comes from its own selection fold K+1 (recorded, or
    fitted then), the metrics are per fold and pooled over every test prediction."""
    from fercli.data.prepared import CKPLUS_CLASSES
    from fercli.evaluation import evaluate as evaluation
    from fercli.model.checkpoints import CHECKPOINT_FORMAT, save_checkpoint
    from fercli.model.networks import build_model
    from tests.test_engine import make_ck_like

    ds_path = make_ck_like(tmp_path / "ck")
    ds = load_prepared(ds_path)
    models = []
    for k in range(3):
        torch.manual_seed(k)
        model = build_model("resnet34", 7).eval()
        models.append(model)
        ckpt = {"format": CHECKPOINT_FORMAT, "model_spec": dict(model.spec), "classes": CKPLUS_CLASSES,
                "model": model.state_dict(), "best": {"epoch": 1, "val_acc": 0.5},
                "config": {"dataset": str(ds_path), "model": "resnet34", "fold": k},
                "dataset_sha256": ds.sha256, "dataset_name": "ck+"}
        if k == 2:
            ckpt["calibration"] = {"temperature": 1.5, "split": "fold0"}
        (tmp_path / "root" / f"fold-{k}").mkdir(parents=True)
        save_checkpoint(tmp_path / "root" / f"fold-{k}" / "best.pt", ckpt)
    monkeypatch.setattr(evaluation, "autocast_dtype", lambda device, precision: None)  # fp32, as below
    m = evaluation.evaluate_target(evaluation.EvaluateConfig(target=str(tmp_path / "root"), device="cpu"))
    pooled = m["calibration"]
    assert pooled["temperature_splits"] == ["fold1", "fold2", "fold0"]
    ys, before, after = [], [], []
    for k, model in enumerate(models):
        val, test = (np.flatnonzero(ds.fold == f) for f in ((k + 1) % 3, k))
        logits = {name: inference.model_logits(model, torch.from_numpy(ds.images[rows]).unsqueeze(1))
                  for name, rows in (("val", val), ("test", test))}
        fitted = temp.fit_temperature(logits["val"], ds.labels[val])
        t = 1.5 if k == 2 else 1.0 if fitted in temp.TEMPERATURE_BOUNDS else fitted  # a bound: T = 1 kept
        assert pooled["temperatures"][k] == pytest.approx(t, rel=1e-6)
        fold = m["per_fold"][k]["calibration"]
        assert fold["temperature_source"] == ("recorded in the model" if k == 2 else
                                              "fitted now on the selection split (not saved: `fer calibrate` records it)")
        assert fold["after"]["ece"] == pytest.approx(cal.ece(temp.softmax(logits["test"], t), ds.labels[test]), abs=1e-6)
        ys.append(ds.labels[test])
        before.append(temp.softmax(logits["test"]))
        after.append(temp.softmax(logits["test"], t))
    y = np.concatenate(ys)
    assert pooled["before"]["nll"] == pytest.approx(cal.nll(np.concatenate(before), y), rel=1e-6)
    assert pooled["after"]["ece"] == pytest.approx(cal.ece(np.concatenate(after), y), abs=1e-6)
    assert pooled["ece_per_fold"]["after"] == [f["calibration"]["after"]["ece"] for f in m["per_fold"]]
    assert (tmp_path / "root" / "reliability.png").is_file()


# ----------------------------------------------------------------------------- the shipped model


def test_shipped_model_records_t_from_public_test_and_keeps_every_label() -> None:
    from fercli.export.onnx_format import sample_calibration_faces
    from fercli.infer.sources import load_model_source

    src = load_model_source("default")
    rec = src.calibration
    assert rec is not None, "the shipped model records no temperature (fer calibrate default --out ...)"
    assert rec["split"] == "public_test" and rec["num_samples"] == 3589
    assert rec["dataset_sha256"] == src.dataset_sha256  # the dataset version it was trained on
    t = temp.temperature_of(src.meta)
    assert t > 1.0  # the model was overconfident: T softens it
    faces = sample_calibration_faces(48)
    plain = FaceClassifier(src.model, src.classes, torch.device("cpu")).predict_proba(faces)
    warm = FaceClassifier(src.model, src.classes, torch.device("cpu"), temperature=t).predict_proba(faces)
    assert len(set(plain.argmax(1).tolist())) >= 2
    assert np.array_equal(plain.argmax(1), warm.argmax(1))
    assert warm.max(1).mean() < plain.max(1).mean()  # less confident, same labels


def test_ece_interval_holds_the_ece_is_seeded_and_narrows_with_more_faces() -> None:
    """The bootstrap's bin sums give the ECE itself on the identity resample (checked through
    a one-face-per-draw case), the interval brackets the ECE, a seed repeats it exactly, and
    100x the faces of the same distribution narrow it."""
    p, y = _hand_example()
    # every resample of one face is that face: the interval collapses onto its ECE
    assert cal.ece_interval(p[:1], y[:1]) == pytest.approx((cal.ece(p[:1], y[:1]),) * 2, abs=1e-12)
    z, yy = _calibrated_split(n=20000)
    over = temp.softmax(2.0 * z)  # overconfident: a clear, non-zero ECE
    small, large = (over[:200], yy[:200]), (over, yy)
    lo, hi = cal.ece_interval(*small)
    assert lo <= cal.ece(*small) <= hi
    assert cal.ece_interval(*small) == (lo, hi) and cal.ece_interval(*small, seed=1) != (lo, hi)
    lo2, hi2 = cal.ece_interval(*large)
    assert lo2 <= cal.ece(*large) <= hi2 and (hi2 - lo2) < (hi - lo) / 4
    assert cal.calibration_metrics(*small)["ece_ci95"] == [lo, hi]
    assert all(np.isnan(cal.ece_interval(p[:0], y[:0])))


def test_ece_if_calibrated_is_the_finite_sample_floor_and_flags_a_miscalibrated_model() -> None:
    """Consistency resampling: by hand on one face, zero for certain forecasts, shrinking with
    more faces; a model calibrated by construction stays under its 95th percentile, and an
    overconfident one with the same ranking lands far above its own."""
    # one face at 0.5: every drawn label is right or wrong with |1 - 0.5| = |0 - 0.5| = 0.5
    assert cal.ece_if_calibrated(np.array([[0.5, 0.5]])) == (0.5, 0.5)
    assert cal.ece_if_calibrated(np.eye(3)[[0, 2, 1, 1]]) == (0.0, 0.0)  # certain: always right
    z, y = _calibrated_split(n=20000)
    p, over = temp.softmax(z), temp.softmax(2.0 * z)
    mid_small, _ = cal.ece_if_calibrated(p[:200])
    mid_large, p95 = cal.ece_if_calibrated(p[:5000])
    assert 0 < mid_large < mid_small / 4  # 25x the faces: about 5x less binning noise
    assert cal.ece(p[:5000], y[:5000]) <= p95  # truly calibrated: inside what chance allows
    assert cal.ece(over[:5000], y[:5000]) > 3 * cal.ece_if_calibrated(over[:5000])[1]
    assert cal.ece_if_calibrated(p[:200]) == cal.ece_if_calibrated(p[:200])  # seeded
    assert cal.calibration_metrics(p[:200], y[:200])["ece_if_calibrated"] == list(cal.ece_if_calibrated(p[:200]))
    assert all(np.isnan(cal.ece_if_calibrated(p[:0])))


def test_a_split_without_errors_cannot_pin_t_and_keeps_t_1() -> None:
    """No misclassified face: the NLL falls without bound as T -> 0, so the fit sits at the
    lower bound; the record keeps T = 1 and says why. One error gives a finite T again."""
    from types import SimpleNamespace

    from fercli.evaluation.calibrate import fit_record

    ds = SimpleNamespace(name="toy", sha256="0" * 64)
    z = np.tile(np.array([[3.0, 0.0, 0.0]]), (12, 1))
    y = np.zeros(12, dtype=np.int64)
    assert temp.fit_temperature(z, y) == temp.TEMPERATURE_BOUNDS[0]
    rec = fit_record(z, y, "fold2", ds)  # type: ignore[arg-type]
    assert rec["temperature"] == 1.0 and "T = 0.01" in rec["unidentifiable"] and "errors on it: 0" in rec["unidentifiable"]
    assert rec["after"] == rec["before"]
    y[0] = 1  # one error: a proper minimum inside the bounds
    rec = fit_record(z, y, "fold2", ds)  # type: ignore[arg-type]
    assert temp.TEMPERATURE_BOUNDS[0] < rec["temperature"] < temp.TEMPERATURE_BOUNDS[1] and "unidentifiable" not in rec
