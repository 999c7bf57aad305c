"""Which calibrator the shipped model gets: temperature scaling or ensemble temperature
scaling, chosen on the selection split alone by the rule in docs/results.md ("Choosing the
calibrator on PublicTest"). Writes nothing; prints the held-out scores and the choice.

    FER_DATA_DIR=... .venv/bin/python devtools/release/choose_calibrator.py [--model default] [--json]

Candidates, both fitted by NLL and both keeping every row's argmax:
    temperature  p = softmax(z / T)                                  (Guo et al. 2017)
    ets          p = w1 softmax(z / T) + w2 softmax(z) + w3 / C      (Zhang, Kailkhura & Han 2020)
                 T the temperature fit; w on the simplex maximising the mean log p_y. For fixed
                 components that log-likelihood is concave in w, and the EM update
                 w_k <- mean_i w_k q_ik / sum_j w_j q_ij  (q_ik: component k's probability of
                 row i's label) climbs it monotonically to the optimum.
Estimate: SEEDS random halvings of the split; each candidate is fitted on one half and scored
on the other, both ways. Rule: the lower mean held-out NLL wins; temperature keeps a tie
within TIE (fewer parameters). Only the selection split is read (guard_split refuses the
report split), as for `fer calibrate`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from fercli.data import registry  # noqa: E402
from fercli.device import autocast_dtype, resolve_device  # noqa: E402
from fercli.evaluation.calibration import ece, nll  # noqa: E402
from fercli.model.temperature import fit_temperature, softmax  # noqa: E402

SEEDS = range(20)
TIE = 1e-4
# EM slows to O(1/t) at an optimum on the simplex's edge (a weight -> 0); 20,000 steps leave such
# a weight under 1e-4, within 5e-9 of the NLL that 100,000 reach (measured on the test data).
_EM_STEPS = 20_000
_EM_TOL = 1e-10


def fit_ets(z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """(T, w): the temperature fit, then the mixture weights w (3,) by EM from the centre."""
    t = fit_temperature(z, y)
    rows = np.arange(len(y))
    q = np.stack([softmax(z, t)[rows, y], softmax(z)[rows, y], np.full(len(y), 1.0 / z.shape[1])], axis=1)  # (N, 3)
    w = np.full(3, 1.0 / 3)
    for _ in range(_EM_STEPS):
        r = q * w
        new = (r / r.sum(axis=1, keepdims=True)).mean(axis=0)  # (3,) responsibilities averaged
        done = np.abs(new - w).max() < _EM_TOL
        w = new
        if done:
            break
    return t, w


def ets_probs(z: np.ndarray, t: float, w: np.ndarray) -> np.ndarray:
    """(N, C) mixture probabilities; each component keeps the order of a row's logits, so does the mix."""
    return w[0] * softmax(z, t) + w[1] * softmax(z) + w[2] / z.shape[1]


def _fit_and_score(name: str, z: np.ndarray, y: np.ndarray, zs: np.ndarray, ys: np.ndarray) -> tuple[float, float]:
    if name == "temperature":
        p = softmax(zs, fit_temperature(z, y))
    else:
        p = ets_probs(zs, *fit_ets(z, y))
    return nll(p, ys), ece(p, ys)


def cross_fit(z: np.ndarray, y: np.ndarray, seeds=SEEDS) -> dict[str, dict[str, float]]:
    """Mean and std of the held-out NLL and ECE of each candidate over the halvings."""
    scores: dict[str, list[tuple[float, float]]] = {"temperature": [], "ets": []}
    for seed in seeds:
        perm = np.random.default_rng(seed).permutation(len(y))
        a, b = perm[: len(y) // 2], perm[len(y) // 2:]
        for fit, held in ((a, b), (b, a)):
            for name in scores:
                scores[name].append(_fit_and_score(name, z[fit], y[fit], z[held], y[held]))
    out = {}
    for name, s in scores.items():
        v = np.array(s)  # (2 * seeds, 2): NLL, ECE
        out[name] = {"nll": float(v[:, 0].mean()), "nll_std": float(v[:, 0].std()),
                     "ece": float(v[:, 1].mean()), "ece_std": float(v[:, 1].std()), "scores": len(v)}
    return out


def choose(held_out: dict[str, dict[str, float]]) -> str:
    return "ets" if held_out["ets"]["nll"] < held_out["temperature"]["nll"] - TIE else "temperature"


def selection_logits(model_ref: str, dataset: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Raw logits (N, C) and labels of the model's selection split, as `fer calibrate` reads them."""
    # torch: only when logits are computed, not for the pure choice functions
    from fercli.data.resident import plan_splits
    from fercli.evaluation import calibrate
    from fercli.infer.sources import load_model_source

    ds = registry.load_dataset(dataset)
    plan = plan_splits(ds, None)
    device = resolve_device("auto")
    z, y = calibrate.selection_logits(load_model_source(model_ref).model, ds, plan, plan.val_name, device,
                                      amp_dtype=autocast_dtype(device, "auto"))
    return z, y, plan.val_name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--dataset", default="fer2013", help="prepared dataset with a train/selection/report split")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    z, y, split = selection_logits(args.model, args.dataset)
    held_out = cross_fit(z, y)
    t, w = fit_ets(z, y)
    out = {"model": args.model, "split": split, "faces": int(len(y)), "halvings": len(SEEDS),
           "held_out": held_out, "choice": choose(held_out),
           "full_split_fit": {"temperature": fit_temperature(z, y), "ets_temperature": t, "ets_weights": w.tolist()}}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    for name, s in held_out.items():
        print(f"{name:12s} held-out NLL {s['nll']:.5f} ± {s['nll_std']:.5f}   ECE {100 * s['ece']:.2f} ± "
              f"{100 * s['ece_std']:.2f} %   ({s['scores']} scores on halves of {split})")
    print(f"choice: {out['choice']} (lower mean held-out NLL; temperature keeps a tie within {TIE})")


if __name__ == "__main__":
    main()
