"""The from-scratch FER2013 recipe search, sized to one device call.

    PYTHONPATH=. python3 devtools/gpu_check/recipe_search.py --recipes devtools/gpu_check/recipes_fer2013.json \
        --budget-s 440 --device cuda --work /tmp/rs --json rs.json [--export DIR] [--dry]

1. Throughput probe: `fer bench`'s engine (fercli.bench.engine_bench.run_bench, graphed step) for each
   image size the recipes use, shared-trunk B-CNN at the preset's batch 128.
2. Each recipe in turn: `fer train --preset fer2013-scratch <its options> --epochs E`, where E
   is what its equal share of the budget left affords at the probed rate (capped by the
   recipe's own `max_epochs`). Checkpoints are selected on PublicTest by fer train itself.
3. The recipe with the best PublicTest accuracy (its selected checkpoint) is chosen. Only that
   run is evaluated on PrivateTest (`fer evaluate`, single model; then `--tta flip`, reported
   separately) and exported (`fer export --max-shard-mb 15`). The other runs never see
   PrivateTest: PublicTest alone chooses the recipe.
4. CK+ transfer (when CK+ is prepared beside FER2013 and the recipes file has "ck_transfer"):
   `fer train --dataset ck+ --init-from <the chosen run> --fold all <its args>`, every
   subject-independent fold (test K, select on K+1), then `fer evaluate` for mean ± std and
   pooled. The CK+ recipe is fixed in the file, chosen beforehand on CK+ selection folds; its
   time is reserved before the FER2013 shares are cut. "FER2013-pretrained", never ImageNet.

With --wild-inputs (gpu_payload/wild_inputs.npz, devtools/gpu_check/make_wild_inputs.py), each
recipe's selected checkpoint is also scored on wild-dev right after its run
(devtools/gpu_check/wild_eval.py: `fer predict`'s default path on the torch backend, flip TTA),
beside its PublicTest number. wild-dev is reported, never used to choose: PublicTest alone does.

Everything measured (probe rates, per-run epochs, seconds, PublicTest curve, the choice, its
PrivateTest numbers) goes into --json. --dry runs the same flow on a CPU at toy sizes
(--train-subset, 2 epochs) to check it end to end; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

TRAIN_IMAGES, VAL_IMAGES = 28709, 3589  # FER2013 Training, PublicTest
START_S = 35.0  # one `fer train` process: imports, data to the device, cuDNN autotuning, graph capture (~25 s at 48 px on the H200; 96 px unmeasured)
FALLBACK_IMG_PER_S = 6000.0  # 48 px, if the probe fails: the eager rate measured on the H200


def probe(sizes: list[int], device: str, dry: bool) -> dict[int, tuple[float, float]]:
    """(graphed, eager) training img/s of the preset's model at each image size (batch 128);
    on a CPU both are the eager rate."""
    from fercli.bench.engine_bench import BenchConfig, run_bench

    rates = {}
    for size in sizes:
        cfg = BenchConfig(device=device, model="bcnn-resnet34", shared_backbone=True, image_size=size,
                          batch_size=8 if dry else 128, steps=2 if dry else 30, warmup=1 if dry else 8,
                          reference=False, inference=False, synthetic=True, max_images=64 if dry else 4096)
        res = run_bench(cfg)
        fast = float(res["engine_img_per_s"])
        rates[size] = (fast, float(res.get("engine_eager_img_per_s") or fast))
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()  # the runs are other processes: give the probe's memory back
    return rates


def epochs_for(seconds: float, rate: float, max_epochs: int, train_images: int) -> int:
    """Epochs that fit `seconds` at `rate` img/s: training + PublicTest (forward only, about a
    third of a training image's cost) + ~0.25 s of per-epoch host work (measured on the H200:
    1.5 s per epoch at 21,500 img/s), after START_S."""
    per_epoch = train_images / rate + VAL_IMAGES / (3 * rate) + 0.25
    return max(1, min(max_epochs, int((seconds - START_S) / per_epoch)))


def history(run: Path) -> list[dict]:
    try:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader((run / "history.csv").open())]
    except OSError:
        return []


def fer(args: list[str], timeout: float) -> tuple[int, str]:
    """`python -m fercli ARGS`; (exit code, stdout). stderr goes to ours (the call's log)."""
    try:
        p = subprocess.run([sys.executable, "-m", "fercli", *args], stdout=subprocess.PIPE, text=True,
                           timeout=max(1.0, timeout), cwd=REPO)
        return p.returncode, p.stdout
    except subprocess.TimeoutExpired as exc:
        return 124, exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")


def wild_dev(run: Path, inputs: dict | None, device: str, dry: bool) -> dict | None:
    """wild-dev scores of the run's selected checkpoint (best.pt); None without inputs. A
    failure is recorded, never raised: it must not cost the other recipes their runs."""
    if inputs is None or not (run / "best.pt").is_file():
        return None
    from devtools.gpu_check.wild_eval import wild_scores

    if dry:  # a CPU classifying 96 px faces twice over: every 12th face checks the flow
        inputs = {**inputs, "inputs": inputs["inputs"][::12], "labels": inputs["labels"][::12]}
    t = time.monotonic()
    try:
        out = wild_scores(run / "best.pt", inputs, device=device, backend="torch")
    except Exception as exc:
        out = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()  # the next run is another process: give this memory back
    return {**out, "seconds": round(time.monotonic() - t, 1)}


def data_dir() -> Path:
    return Path(os.environ.get("FER_DATA_DIR") or REPO / "data")


def ck_transfer(spec: dict, init_run: Path, image_size: int, work: Path, device: str, seconds: float,
                dry: bool) -> dict:
    """Step 4: the fixed CK+ recipe from the chosen FER2013 run's trunk, all folds, evaluated.
    CK+ trains at the source run's image size (its 48 px crops upsampled like FER2013's), so
    the trunk sees faces at the scale it learned. A run cut by its time keeps the folds it
    finished; fer evaluate reports those."""
    out = work / "ck-transfer"
    toy = ["--train-subset", "16", "--batch-size", "8", "--epochs", "1"] if dry else []
    cmd = ["train", "--dataset", "ck+", "--init-from", str(init_run), "--fold", "all", *spec["args"],
           "--image-size", str(image_size), *toy,
           "--device", device, "--checkpoint-every", "1000s", "--out", str(out), "--force", "--quiet", "--json"]
    entry: dict = {"what": "CK+ subject-independent 10-fold (test fold K, checkpoint selected on fold K+1), "
                           "trunk FER2013-pretrained from this call's chosen from-scratch FER2013 run "
                           "(never ImageNet), head fresh; single models, no TTA",
                   "init_from": init_run.name, "args": cmd[1:], "why": spec.get("why", "")}
    print(f"== ck+ transfer in {seconds:.0f} s: fer {' '.join(cmd)}", file=sys.stderr, flush=True)
    t = time.monotonic()
    t_end = t + seconds
    rc, _ = fer(cmd, seconds - 35)  # 35 s for fer evaluate: ten folds' checkpoints, ~100 faces each
    entry.update(exit=rc, seconds=round(time.monotonic() - t, 1))
    folds = sorted(out.glob("fold-*/train_summary.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    summaries = [(p.parent, json.loads(p.read_text())) for p in folds]
    entry["folds"] = [{"fold": d.name, "selection_acc": s.get("best_val_acc"), "best_epoch": s.get("best_epoch"),
                       "seconds": s.get("seconds"), "history": history(d)} for d, s in summaries]
    if folds:
        rc_e, text = fer(["evaluate", str(out), "--device", device, "--json"], max(30.0, t_end - time.monotonic()))
        try:
            entry["test"] = json.loads(text)
        except ValueError:
            entry["test"] = {"error": f"fer evaluate exit {rc_e}"}
    return entry


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", default=str(REPO / "devtools" / "gpu_check" / "recipes_fer2013.json"))
    ap.add_argument("--budget-s", type=float, default=440.0, help="probe + training runs + evaluation")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--work", default="/tmp/fer_recipes")
    ap.add_argument("--json", required=True)
    ap.add_argument("--export", default=None, help="export the chosen model here (≤ 15 MiB shards)")
    ap.add_argument("--wild-inputs", default=None, help="wild_inputs.npz: score each recipe's checkpoint on wild-dev")
    ap.add_argument("--dry", action="store_true")
    args = ap.parse_args()
    t0 = time.monotonic()
    deadline = t0 + args.budget_s
    plan = json.loads(Path(args.recipes).read_text())
    recipes = plan["recipes"]
    ck_spec = plan.get("ck_transfer") if (data_dir() / "ckplus" / "manifest.json").is_file() else None
    work = Path(args.work)
    (work / "runs").mkdir(parents=True, exist_ok=True)
    toy = ["--train-subset", "32", "--batch-size", "8"] if args.dry else []
    train_images = 32 if args.dry else TRAIN_IMAGES

    report: dict = {"protocol": "FER2013 from scratch: train on Training, select checkpoint AND recipe on "
                                "PublicTest; PrivateTest read once, for the chosen run only",
                    "device": args.device, "dry": args.dry, "recipes": []}
    sizes = sorted({int(r.get("image_size", 48)) for r in recipes})
    t = time.monotonic()
    try:
        rates = probe(sizes, args.device, args.dry)
        report["probe"] = {"ok": True}
    except Exception as exc:  # never lose the training runs to the probe: assume conservative rates
        rates = {s: (FALLBACK_IMG_PER_S * (48 / s) ** 2,) * 2 for s in sizes}
        report["probe"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    report["probe"] |= {"img_per_s": {str(k): round(v[0], 1) for k, v in rates.items()},
                       "eager_img_per_s": {str(k): round(v[1], 1) for k, v in rates.items()},
                       "seconds": round(time.monotonic() - t, 1)}
    print(f"probe: {report['probe']}", file=sys.stderr, flush=True)

    wild = None
    if args.wild_inputs:
        from devtools.gpu_check.wild_eval import load_inputs

        wild = load_inputs(Path(args.wild_inputs))
        report["wild_dev_inputs"] = {k: wild[k] for k in ("labels_csv_sha256", "code_version", "detector",
                                                           "frame", "intensity", "tta")} | {"n": len(wild["labels"])}
    reserve = 30.0 if args.dry else 45.0  # evaluate ×2 + export of the chosen run
    reserve += 8.0 * len(recipes) if wild else 0.0  # wild-dev: a checkpoint load and 1,596 forwards per recipe
    ck_s = (90.0 if args.dry else float(ck_spec.get("reserve_s", 120))) if ck_spec else 0.0
    reserve += ck_s  # step 4's time comes off the top, before the recipes' shares
    for i, r in enumerate(recipes):
        left = deadline - reserve - time.monotonic()
        share = left / (len(recipes) - i)
        size = int(r.get("image_size", 48))
        run = work / "runs" / r["name"]
        entry = {"name": r["name"], "why": r.get("why", ""), "share_s": round(share, 1)}
        report["recipes"].append(entry)
        if share < START_S + 10:
            entry["status"] = f"skipped: {share:.0f} s of the budget left for it"
            continue
        t = time.monotonic()
        # A run that fails before its first epoch (e.g. a graph capture refused) is retried once
        # eagerly (--no-cuda-graphs), with the epochs sized for the eager rate.
        for attempt, (rate, extra) in enumerate(((rates[size][0], []), (rates[size][1], ["--no-cuda-graphs"]))):
            budget = share - (time.monotonic() - t)
            epochs = 2 if args.dry else epochs_for(budget, rate, int(r.get("max_epochs", 200)), train_images)
            cmd = ["train", "--dataset", "fer2013", "--preset", "fer2013-scratch", "--image-size", str(size),
                   *r.get("args", []), *extra, "--epochs", str(epochs), "--device", args.device, *toy,
                   "--checkpoint-every", "1000s", "--out", str(run), "--force", "--quiet", "--json"]
            entry.update(args=cmd[5:], epochs=epochs, attempt=attempt + 1)
            print(f"== {r['name']}: {epochs} epochs in {budget:.0f} s: fer {' '.join(cmd)}", file=sys.stderr, flush=True)
            rc, _ = fer(cmd, budget + 30)  # the size is an estimate: a little slack before the kill
            if rc == 0 or history(run) or rc == 124 or attempt == 1 or args.device == "cpu":
                break
        entry["seconds"] = round(time.monotonic() - t, 1)
        entry["exit"] = rc
        h = history(run)
        entry["history"] = h
        if h:
            best = max(h, key=lambda row: (row["val_acc"], -row["val_loss"]))  # fer train's rule
            entry.update(public_test=best["val_acc"], best_epoch=int(best["epoch"]),
                         final_train_acc=h[-1]["train_acc"], epochs_done=len(h),
                         img_per_s=sorted(row["img_per_s"] for row in h)[len(h) // 2])
        entry["status"] = "ok" if rc == 0 else ("timed out (best.pt so far kept)" if rc == 124 else "failed")
        w = wild_dev(run, wild, args.device, args.dry)
        if w is not None:
            entry["wild_dev"] = w
        print(f"   {r['name']}: exit {rc}, PublicTest {entry.get('public_test')}, wild-dev "
              f"{(w or {}).get('accuracy')} (mean recall {(w or {}).get('mean_recall')})", file=sys.stderr, flush=True)

    done = [e for e in report["recipes"] if e.get("public_test") is not None
            and (work / "runs" / e["name"] / "best.pt").is_file()]
    if done:
        chosen = max(done, key=lambda e: e["public_test"])
        run = work / "runs" / chosen["name"]
        report["chosen"] = {"name": chosen["name"], "public_test": chosen["public_test"],
                            "rule": "highest PublicTest accuracy of the run's selected checkpoint"}

        def evaluate(key: str, extra: list[str]) -> None:
            rc, out = fer(["evaluate", str(run), "--device", args.device, "--json", *extra],
                          max(20.0, deadline - time.monotonic()))
            try:
                report["chosen"][key] = json.loads(out)
            except ValueError:
                report["chosen"][key] = {"error": f"fer evaluate exit {rc}"}

        evaluate("private_test", [])  # single model, no TTA: the number the export records
        if args.export:
            Path(args.export).mkdir(parents=True, exist_ok=True)
            rc, _ = fer(["export", str(run), "--out", str(Path(args.export) / "model.npz"), "--max-shard-mb", "15"],
                        max(20.0, deadline + 30 - time.monotonic()))
            report["chosen"]["export_exit"] = rc
        evaluate("private_test_tta_flip", ["--tta", "flip"])  # after the export: reported separately
        if ck_spec:
            size = int(next(r for r in recipes if r["name"] == chosen["name"]).get("image_size", 48))
            report["ck_transfer"] = ck_transfer(ck_spec, run, size, work, args.device,
                                                max(30.0, deadline - time.monotonic()), args.dry)
    report["seconds"] = round(time.monotonic() - t0, 1)
    tmp = Path(args.json).with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, args.json)
    summary = [(e["name"], e.get("epochs_done"), e.get("public_test"), (e.get("wild_dev") or {}).get("accuracy"))
               for e in report["recipes"]]
    ck = (report.get("ck_transfer") or {}).get("test", {}).get("kfold")
    print(json.dumps({"recipes": summary, "chosen": report.get("chosen", {}).get("name"),
                      "ck_transfer_mean": ck and ck.get("accuracy_mean")}), flush=True)


if __name__ == "__main__":
    main()
