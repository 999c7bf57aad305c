"""What a `fer ablate` ladder has done so far, without training anything (`fer ablate --progress`).

`ladder_progress` reads every planned run directory (fercli.ablation.ablate.plan_ablation)
and builds Table 5 from the runs that finished: rows done, partial (with their fold counts) or
pending. A run counts when its config and dataset agree with the ladder's; it keeps the code
version it was trained by (a run by other code is shown, and named, but `fer ablate` itself
would retrain it: its cache asks for the same code).

No Typer/Rich here.
"""

from __future__ import annotations

from typing import Any

from fercli.ablation.ablate import (
    AblateConfig,
    PlannedRun,
    cached_record,
    config_problem,
    ladder_result,
    plan_ablation,
)
from fercli.ablation.ablate_estimate import epochs_done
from fercli.provenance import code_version

# What a finished run's config.json says of where it ran, carried into the table's runs.
_PROVENANCE = ("device", "precision", "torch_version", "started")


def run_state(run: PlannedRun) -> dict[str, Any]:
    """One planned run as it stands on disk: done (test accuracy read), trained (not evaluated
    yet), started (epochs done so far: running, or interrupted), pending, or other (a run
    under that path with another config or dataset, which `fer ablate` would retrain)."""
    d = run.run_dir
    info: dict[str, Any] = {"row": run.rung.name, "seed": run.seed, "fold": run.fold, "run_dir": str(d),
                            "epochs": run.tcfg.epochs}
    if not (d / "config.json").is_file():
        return {**info, "state": "pending", "epochs_done": 0}
    problem = config_problem(d, run.tcfg, run.ds.sha256)
    if problem is not None:
        return {**info, "state": "other", "reason": problem, "epochs_done": 0}
    record = cached_record(d / "config.json") or {}
    code = record.get("code_version")
    summary, metrics = cached_record(d / "train_summary.json"), cached_record(d / "metrics.json")
    if summary is not None and metrics is not None and isinstance(metrics.get("accuracy"), (int, float)):
        # where and how it ran, from its own record: a ladder read from several parts names each run's
        return {**info, "state": "done", "accuracy": float(metrics["accuracy"]), "split": metrics.get("split"),
                "best_epoch": metrics.get("best_epoch"), "seconds": summary.get("seconds"),
                "epochs_done": run.tcfg.epochs, "code_version": code,
                **{k: record.get(k) for k in _PROVENANCE}}
    if summary is not None:
        return {**info, "state": "trained", "epochs_done": run.tcfg.epochs, "seconds": summary.get("seconds"),
                "code_version": code}
    return {**info, "state": "started", "epochs_done": epochs_done(d), "code_version": code}


def ladder_progress(cfg: AblateConfig) -> dict[str, Any]:
    """Table 5 from the finished runs and the state of every planned run; trains and writes nothing."""
    plan = plan_ablation(cfg, download=False)  # reads what is on disk: never the network
    states = [run_state(r) for r in plan.runs]
    finished: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r, st in zip(plan.runs, states, strict=True):
        if st["state"] == "done":
            finished.setdefault((r.ds.key, r.rung.name), []).append(
                {"seed": r.seed, "fold": r.fold, "run_dir": st["run_dir"], "status": "done",
                 "accuracy": st["accuracy"], "split": st["split"], "best_epoch": st["best_epoch"],
                 "seconds": st["seconds"], "code_version": st["code_version"],
                 **{k: st[k] for k in _PROVENANCE}})
    result = ladder_result(cfg, plan, finished)
    counts: dict[str, int] = {}
    for st in states:
        counts[st["state"]] = counts.get(st["state"], 0) + 1
    now = code_version()
    result["progress"] = {
        "runs": states,
        "counts": counts,
        "total": len(states),
        "code_versions": sorted({st["code_version"] for st in states if st.get("code_version")}),
        "this_code": now,
    }
    return result
