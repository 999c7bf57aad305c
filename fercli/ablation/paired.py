"""Each Table 5 step as a paired comparison: row k − row k−1 fold by fold (or seed by seed).

Two rows of the ladder are trained on the same folds, so the fold-to-fold spread they share
(an easy fold is easy for both) cancels in their per-fold differences; the mean of those
differences, its interval and two tests say whether a step helps, which two means ± std
side by side cannot. Only folds (seeds) that both rows finished count, matched by id.

  - 95 % interval: mean ± t_{0.975, n−1} · sd / √n (Student t, sd with n − 1). It assumes the
    differences are roughly normal and the folds independent; CK+'s subject folds share no
    subject, but they share the training data of the other folds, so it is an approximation.
  - paired t-test, two-sided, same assumptions.
  - Wilcoxon signed-rank, two-sided, exact: no normality assumed, only symmetry of the
    differences about their median. Zero differences are dropped (Wilcoxon's own rule, scipy's
    default); tied |differences| get their mean rank and the p-value is the exact one of the
    sign-flip distribution with those ranks (scipy falls back to a normal approximation there).

Pure Python (math only): no torch, no scipy, so the ladder's tables import without the train
extra. Accuracies and differences are in percentage points.
"""

from __future__ import annotations

import math
from typing import Any

from fercli.ablation.ladder import WEIGHTS_UNAVAILABLE


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for aa in (m * (b - m) * x / ((a - 1.0 + 2 * m) * (a + 2 * m)),
                   -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1.0 + 2 * m))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    # the fraction converges fast on this side of the mean; the other side by symmetry
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| ≥ |t|) for Student's t with `df` degrees of freedom."""
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(q: float, df: int) -> float:
    """The `q` quantile (q > 0.5) of Student's t with `df` degrees of freedom, by bisection
    on the two-sided tail (monotone in t)."""
    tail = 2.0 * (1.0 - q)
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > tail:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > tail else (lo, mid)
    return (lo + hi) / 2.0


def signed_ranks(diffs: list[float]) -> list[tuple[float, bool]]:
    """(rank of |d|, d > 0) for the non-zero differences; ties get their mean rank."""
    nz = sorted((abs(d), d > 0) for d in diffs if d != 0)
    out: list[tuple[float, bool]] = []
    i = 0
    while i < len(nz):
        j = i
        while j + 1 < len(nz) and nz[j + 1][0] == nz[i][0]:
            j += 1
        out += [((i + j) / 2.0 + 1.0, pos) for _, pos in nz[i:j + 1]]
        i = j + 1
    return out


def wilcoxon_exact_p(diffs: list[float]) -> float:
    """Two-sided exact Wilcoxon signed-rank p: 2 · min(P(W+ ≤ w), P(W+ ≥ w)), capped at 1, over
    the 2^n equally likely sign patterns of the non-zero differences' ranks (counted by
    dynamic programming on doubled ranks, which are integers even with ties). All zero: 1."""
    ranks = signed_ranks(diffs)
    if not ranks:
        return 1.0
    doubled = [round(2 * r) for r, _ in ranks]
    w = sum(r for r, (_, pos) in zip(doubled, ranks, strict=True) if pos)
    counts = [1] + [0] * sum(doubled)  # counts[s]: sign patterns whose positive ranks sum to s
    for r in doubled:
        for s in range(len(counts) - 1, r - 1, -1):
            counts[s] += counts[s - r]
    total = 2 ** len(doubled)
    below, above = sum(counts[:w + 1]), sum(counts[w:])
    return min(1.0, 2.0 * min(below, above) / total)


def paired_stats(diffs: list[float]) -> dict[str, Any]:
    """n, mean, sd (n − 1), the 95 % t interval, the t-test and Wilcoxon p of `diffs`; with
    fewer than two, the interval and the tests are None and `note` says why."""
    n = len(diffs)
    out: dict[str, Any] = {"n": n, "mean_diff": sum(diffs) / n if n else None, "sd_diff": None, "ci95": None,
                           "t_p": None, "wilcoxon_p": None, "note": None}
    if n < 2:
        out["note"] = f"{n} paired {'value' if n == 1 else 'values'}: an interval and a test need at least 2"
        return out
    m = out["mean_diff"]
    sd = math.sqrt(sum((d - m) ** 2 for d in diffs) / (n - 1))
    half = t_quantile(0.975, n - 1) * sd / math.sqrt(n)
    out.update(sd_diff=sd, ci95=[m - half, m + half], wilcoxon_p=wilcoxon_exact_p(diffs))
    if sd == 0.0:
        out["note"] = "every difference is the same (sd 0): the t-test is undefined"
    else:
        out["t_p"] = t_two_sided_p(m / (sd / math.sqrt(n)), n - 1)
    return out


def _by_id(row: dict[str, Any]) -> tuple[dict[str, float], str]:
    """A row's accuracy per fold (k-fold, seeds averaged) or per seed, and which it is."""
    if row.get("per_fold_pct") is not None:
        return row["per_fold_pct"], "folds"
    return row.get("per_seed_mean_pct") or {}, "seeds"


def _sort_key(i: str) -> tuple[int, Any]:
    return (0, int(i)) if i.lstrip("-").isdigit() else (1, i)


def paired_step(row: dict[str, Any], prev: dict[str, Any]) -> dict[str, Any]:
    """The step from `prev` to `row` over the folds (seeds) both finished."""
    mine, over = _by_id(row)
    theirs, _ = _by_id(prev)
    common = sorted(set(mine) & set(theirs), key=_sort_key)
    diffs = {i: mine[i] - theirs[i] for i in common}
    paper_step = (row["paper_pct"] - prev["paper_pct"]
                  if row.get("paper_pct") is not None and prev.get("paper_pct") is not None else None)
    return {"from": prev["name"], "to": row["name"], "paired_on": over, "folds": common, "diffs": diffs,
            **paired_stats(list(diffs.values())), "paper_step": paper_step}


def paired_steps(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every step of the ladder: each row that ran against the row that ran before it (rows
    not run, for want of weights, are skipped, as in the table's change column)."""
    ran = [r for r in rows if r["status"] != WEIGHTS_UNAVAILABLE]
    return [paired_step(r, prev) for prev, r in zip(ran[:-1], ran[1:], strict=True)]
