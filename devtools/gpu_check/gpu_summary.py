"""Summarise a devtools/gpu_check/gpu_check.sh run: every GPU target row, measured or missing, plus
the loss-curve comparison, the accuracy run and the step log → one JSON (gpu_check.json).

    python3 devtools/gpu_check/gpu_summary.py WORK OUT_JSON T_START EPOCHS
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path


def load(path: Path):  # type: ignore[no-untyped-def]
    try:
        return json.loads(path.read_text())
    except Exception:
        return None


def history(run: Path) -> list[dict]:
    try:
        return list(csv.DictReader((run / "history.csv").open()))
    except OSError:
        return []


def main() -> None:
    work, out, t_start, epochs = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    steps = []
    for line in (work / "steps.tsv").read_text().splitlines():
        name, rc, sec = line.split("\t")
        steps.append({"step": name, "exit": rc, "seconds": float(sec)})
    rows = (load(work / "rows.json") or {}).get("rows", {})

    def row(name: str, key: str):  # type: ignore[no-untyped-def]
        return (rows.get(name) or {}).get(key)

    # Concurrent runs: wall aggregate (images / wall, start-up included) and steady aggregate
    # (the sum of each run's last-epoch img/s: they ran side by side).
    conc = load(work / "concurrent.out")
    steady = None
    if conc:
        last = [history(Path(r["out"]))[-1:] for r in conc["results"] if r["status"] == "done"]
        steady = round(sum(float(h[0]["img_per_s"]) for h in last if h), 1) if last else None
    # Loss curves: graphed vs eager, same seed and data.
    g, e = (history(work / "runs" / f"curve-{m}") for m in ("cuda-graphs", "no-cuda-graphs"))
    curves = None
    if g and e:
        pairs = [(float(a["train_loss"]), float(b["train_loss"])) for a, b in zip(g, e, strict=False)]
        curves = {"graphed_train_loss": [p[0] for p in pairs], "eager_train_loss": [p[1] for p in pairs],
                  "graphed_val_acc": [float(a["val_acc"]) for a in g], "eager_val_acc": [float(b["val_acc"]) for b in e],
                  "max_rel_diff": round(max(abs(a - b) / max(abs(b), 1e-9) for a, b in pairs), 4),
                  "graphed_img_per_s": [float(a["img_per_s"]) for a in g], "eager_img_per_s": [float(b["img_per_s"]) for b in e],
                  "note": "same seed, data and recipe; bf16 autocast: agreement within bf16 noise, not bit-equal"}
    train = load(work / "train.out")
    train = train[0] if isinstance(train, list) and train else None
    ev = load(work / "evaluate.out")
    config = load(work / "runs" / "accuracy" / "config.json")
    targets = [  # h200_eager_fe97b33: the first H200 call, eager engine at fercli fe97b33 (the baseline)
        {"measure": "shared-trunk bcnn, 48 px, batch 128, train img/s", "h200_eager_fe97b33": 5787, "target": ">= 25000",
         "graphed": row("shared_b128", "engine_img_per_s"), "eager": row("shared_b128", "engine_eager_img_per_s")},
        {"measure": "paper bcnn (two trunks), 48 px, batch 16, one run, img/s", "h200_eager_fe97b33": 502, "target": ">= 2500",
         "graphed": row("paper_b16", "engine_img_per_s"), "eager": row("paper_b16", "engine_eager_img_per_s")},
        {"measure": "paper bcnn, 48 px, batch 16, aggregate over concurrent runs, img/s", "h200_eager_fe97b33": None,
         "target": ">= 8000", "steady_sum_of_runs": steady, "wall_aggregate": conc and conc.get("img_per_s"),
         "runs": conc and len(conc["results"]), "failed": conc and conc.get("failed")},
        {"measure": "paper bcnn, 96 px, batch 256, % of measured bf16 matmul rate", "h200_eager_fe97b33": "2.0% (batch 64)",
         "target": ">= 10%", "graphed": row("paper_96_b256", "fraction_of_peak"),
         "peak_tflops": row("paper_96_b256", "peak_matmul_tflops"),
         "eager_img_per_s": row("paper_96_b256", "engine_eager_img_per_s")},
        {"measure": "fer bench engine vs reference, bcnn 48 px batch 64", "h200_eager_fe97b33": 1.44, "target": ">= 5x",
         "graphed": row("vs_reference", "speedup"), "engine_img_per_s": row("vs_reference", "engine_img_per_s"),
         "eager_img_per_s": row("vs_reference", "engine_eager_img_per_s"),
         "reference_img_per_s": row("vs_reference", "reference_img_per_s")},
        {"measure": "fer predict --device cuda, batch 1, ms per face", "h200_eager_fe97b33": 9.0, "target": "<= 2",
         "graphed": row("predict_b1", "ms_per_face_median"),
         "bench_eager_model_ms": row("vs_reference", "inference_ms_per_face_batch1")},
    ]
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wall_seconds": round(time.time() - t_start, 1),
              "device": row("shared_b128", "device") or row("paper_b16", "device"),
              "targets": targets, "curves": curves, "steps": steps, "rows": rows, "concurrent": conc,
              "prepare": load(work / "prepare_fer2013.out")}
    if train:
        acc = ev.get("accuracy") if ev else None
        result["accuracy_run"] = {
            "what": "FER2013 from scratch (no ImageNet weights), single model, no TTA; checkpoint selected on "
                    "PublicTest, PrivateTest evaluated once on it",
            "config": config and config.get("config"), "epochs": epochs, "seconds": train.get("seconds"),
            "img_per_s": train.get("images_per_second"), "best_epoch": train.get("best_epoch"),
            "public_test_acc_selected": train.get("best_val_acc"), "private_test_acc": acc,
            "private_test_macro_f1": ev.get("macro_f1") if ev else None, "paper_private_test": 0.7055,
            "history": train.get("history"), "metrics": ev}
    result["recipe_search"] = load(work / "recipes.json")  # MODE=recipes (devtools/gpu_check/recipe_search.py)
    result["ablation"] = {p.parent.name: load(p) for p in sorted(work.glob("ablate-*/ablation.json"))}  # MODE=ablate
    out.write_text(json.dumps(result, indent=1, default=str))
    print("\n==== gpu_check summary ====")
    for s in steps:
        print(f"  {s['step']:<24} exit {s['exit']:>7}  {s['seconds']:7.1f} s")
    for t in targets if rows else []:  # MODE=recipes measures no engine rows
        print("  " + t["measure"] + ": " + ", ".join(f"{k}={v}" for k, v in t.items() if k != "measure"))
    if curves:
        print(f"  loss curves graphed vs eager: max rel diff {curves['max_rel_diff']}")
    if train:
        a = result["accuracy_run"]
        print(f"  accuracy run: {epochs} epochs in {a['seconds']} s, PublicTest {a['public_test_acc_selected']}, "
              f"PrivateTest {a['private_test_acc']}")
    rs = result["recipe_search"]
    if rs:
        for r in rs.get("recipes", []):
            w = r.get("wild_dev") or {}
            wild = (f", wild-dev {w.get('accuracy')} (mean recall {w.get('mean_recall')}, n={w.get('n')})"
                    if "wild_dev" in r else "")
            print(f"  recipe {r['name']:<16} {r.get('epochs_done')} epochs, {r.get('seconds')} s, "
                  f"PublicTest {r.get('public_test')} (epoch {r.get('best_epoch')}){wild}, {r['status']}")
        ch = rs.get("chosen") or {}
        print(f"  chosen on PublicTest: {ch.get('name')}; PrivateTest "
              f"{(ch.get('private_test') or {}).get('accuracy')}, flip TTA "
              f"{(ch.get('private_test_tta_flip') or {}).get('accuracy')}")
        ck = rs.get("ck_transfer")
        if ck:
            k = (ck.get("test") or {}).get("kfold") or {}
            print(f"  CK+ transfer from {ck.get('init_from')}: {len(ck.get('folds', []))} folds in {ck.get('seconds')} s, "
                  f"test mean {k.get('accuracy_mean')} ± {k.get('accuracy_std')}, "
                  f"pooled {(ck.get('test') or {}).get('accuracy')}")
    for name, ab in result["ablation"].items():
        for t in (ab or {}).get("tables", []):
            for r in t["rows"]:
                print(f"  {name} {t['dataset']}: {r['name']:<32} ours {r['ours_mean_pct']} ± {r['ours_std_pct']} "
                      f"(n={r['n_runs']}), paper {r['paper_pct']}, {r['status']}")
    print(f"  wrote {out}")


if __name__ == "__main__":
    main()
