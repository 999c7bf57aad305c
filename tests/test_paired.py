"""fercli.ablation.paired: the paired per-fold step of Table 5, checked against closed forms,
hand-computed values and a brute-force count of sign patterns."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from fercli.ablation import paired
from fercli.ablation.ladder import WEIGHTS_UNAVAILABLE


def test_t_quantiles_match_closed_forms_and_the_table() -> None:
    assert paired.t_quantile(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-10)  # Cauchy
    assert paired.t_quantile(0.975, 2) == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025), rel=1e-10)
    assert paired.t_quantile(0.975, 3) == pytest.approx(3.182446, abs=1e-6)
    assert paired.t_quantile(0.975, 9) == pytest.approx(2.262157, abs=1e-6)


def test_t_p_matches_the_closed_forms_for_two_and_three_degrees_of_freedom() -> None:
    for t in (0.3, 1.0, 3.872983, 12.0):
        assert paired.t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-10)
        x = t / math.sqrt(3)
        cdf3 = 0.5 + (x / (1 + x * x) + math.atan(x)) / math.pi
        assert paired.t_two_sided_p(t, 3) == pytest.approx(2 * (1 - cdf3), rel=1e-9)


def test_differences_one_to_four_by_hand() -> None:
    s = paired.paired_stats([1.0, 2.0, 3.0, 4.0])
    sd = math.sqrt(5 / 3)  # squares about 2.5: 2.25 + 0.25 + 0.25 + 2.25 = 5, over n − 1 = 3
    half = 3.182446 * sd / 2
    assert (s["n"], s["mean_diff"], s["note"]) == (4, 2.5, None)
    assert s["sd_diff"] == pytest.approx(sd)
    assert s["ci95"] == pytest.approx([2.5 - half, 2.5 + half], abs=1e-5)
    t = 2.5 / (sd / 2)
    x = t / math.sqrt(3)
    assert s["t_p"] == pytest.approx(2 * (1 - 0.5 - (x / (1 + x * x) + math.atan(x)) / math.pi), rel=1e-9)
    assert s["wilcoxon_p"] == pytest.approx(2 / 16)  # all four positive: 1 pattern of 16 as extreme, two-sided


def test_wilcoxon_exact_small_cases() -> None:
    assert paired.wilcoxon_exact_p([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)
    assert paired.wilcoxon_exact_p([-1, -2, -3, -4, -5]) == pytest.approx(2 / 32)
    assert paired.wilcoxon_exact_p([0, 1, 2, 3, 4, 5]) == pytest.approx(2 / 32)  # the zero is dropped
    assert paired.wilcoxon_exact_p([0, 0]) == 1.0  # nothing left: no evidence either way
    assert paired.wilcoxon_exact_p([3, -3]) == 1.0  # tied ranks 1.5, 1.5: W+ = 1.5 is the middle
    assert paired.signed_ranks([2, -1, 0, 2, 5]) == [(1.0, False), (2.5, True), (2.5, True), (4.0, True)]


def _brute_force_p(diffs: list[float]) -> float:
    ranks = paired.signed_ranks(diffs)
    w = sum(r for r, pos in ranks if pos)
    sums = [sum(r for (r, _), s in zip(ranks, signs, strict=True) if s)
            for signs in itertools.product((False, True), repeat=len(ranks))]
    below = sum(s <= w + 1e-9 for s in sums) / len(sums)
    above = sum(s >= w - 1e-9 for s in sums) / len(sums)
    return min(1.0, 2 * min(below, above))


def test_wilcoxon_counts_every_sign_pattern_exactly_even_with_ties() -> None:
    rng = random.Random(5)
    for _ in range(60):
        diffs = [rng.choice([-3, -2, -1, 0, 1, 2, 3, 4]) * rng.choice([1, 1, 1.5]) for _ in range(rng.randint(1, 12))]
        assert paired.wilcoxon_exact_p(diffs) == pytest.approx(_brute_force_p(diffs), abs=1e-12), diffs


def test_wilcoxon_agrees_with_scipy_without_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(7)
    for n in (2, 5, 10, 16):
        diffs = [rng.uniform(-1, 3) for _ in range(n)]
        assert paired.wilcoxon_exact_p(diffs) == pytest.approx(stats.wilcoxon(diffs, method="exact").pvalue)


def test_fewer_than_two_pairs_or_equal_differences_say_why() -> None:
    one = paired.paired_stats([1.5])
    assert (one["mean_diff"], one["ci95"], one["t_p"], one["wilcoxon_p"]) == (1.5, None, None, None)
    assert "at least 2" in one["note"]
    none = paired.paired_stats([])
    assert (none["n"], none["mean_diff"], none["ci95"]) == (0, None, None) and "at least 2" in none["note"]
    same = paired.paired_stats([2.0, 2.0, 2.0])
    assert same["ci95"] == [2.0, 2.0] and same["t_p"] is None and "sd 0" in same["note"]
    assert same["wilcoxon_p"] == pytest.approx(2 / 8)


def _row(name: str, folds: dict[str, float] | None = None, seeds: dict[str, float] | None = None,
         paper_pct: float | None = None, status: str = "done") -> dict:
    return {"name": name, "status": status, "per_fold_pct": folds, "per_seed_mean_pct": seeds or {},
            "paper_pct": paper_pct}


def test_steps_pair_by_fold_id_over_the_folds_both_rows_finished() -> None:
    rows = [_row("A", {"0": 80.0, "1": 70.0, "2": 60.0, "10": 50.0}, paper_pct=97.0),
            _row("B", {"1": 71.0, "2": 63.0, "10": 56.0, "11": 99.0}, paper_pct=98.0),
            _row("C", {"11": 90.0})]
    ab, bc = paired.paired_steps(rows)
    # fold 0 (A only) and 11 (B only) left out; ids in numeric order, not "10" < "2"
    assert (ab["from"], ab["to"], ab["paired_on"], ab["folds"]) == ("A", "B", "folds", ["1", "2", "10"])
    assert ab["diffs"] == {"1": 1.0, "2": 3.0, "10": 6.0} and ab["mean_diff"] == pytest.approx(10 / 3)
    assert ab["paper_step"] == pytest.approx(1.0)
    assert (bc["n"], bc["mean_diff"], bc["ci95"], bc["paper_step"]) == (1, -9.0, None, None)


def test_steps_without_folds_pair_by_seed_and_skip_rows_not_run() -> None:
    rows = [_row("A", seeds={"0": 60.0, "1": 62.0, "2": 61.0}),
            _row("P", status=WEIGHTS_UNAVAILABLE),
            _row("B", seeds={"0": 63.0, "2": 62.0, "3": 70.0})]
    (step,) = paired.paired_steps(rows)
    assert (step["from"], step["to"], step["paired_on"], step["folds"]) == ("A", "B", "seeds", ["0", "2"])
    assert step["mean_diff"] == pytest.approx(2.0) and step["n"] == 2
