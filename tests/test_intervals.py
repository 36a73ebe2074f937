"""The report's intervals: exact binomial bounds against their closed forms and known values, the seeded paired
bootstrap, and the exact sign test."""

from __future__ import annotations

import pytest

from benchmarks import intervals


@pytest.mark.parametrize(("successes", "n", "low", "high"), [
    (0, 10, 0.0, 1 - 0.025 ** (1 / 10)),   # closed forms at the edges: (α/2)^(1/n)
    (10, 10, 0.025 ** (1 / 10), 1.0),
    (5, 10, 0.187086, 0.812914),          # Clopper–Pearson, as tabulated
    (62, 80, 0.667914, 0.860863),
    (1, 1000, 0.0000253, 0.0055589),
])
def test_exact_binomial_interval_matches_clopper_pearson(successes: int, n: int, low: float, high: float) -> None:
    got = intervals.exact_binomial(successes, n)
    assert got == pytest.approx((low, high), abs=2e-6)
    assert got[0] <= successes / n <= got[1]


def test_exact_binomial_refuses_a_proportion_that_is_not_one() -> None:
    with pytest.raises(ValueError, match="successes"):
        intervals.exact_binomial(3, 2)
    with pytest.raises(ValueError, match="n > 0"):
        intervals.exact_binomial(0, 0)


def test_a_wider_level_gives_a_wider_exact_interval() -> None:
    narrow, wide = intervals.exact_binomial(7, 20), intervals.exact_binomial(7, 20, level=0.99)
    assert wide[0] < narrow[0] and narrow[1] < wide[1]


def test_sign_test_is_exact_binomial() -> None:
    # 8 higher, 2 lower: P(X ≤ 2 | n = 10, ½) = (1 + 10 + 45) / 1024, doubled.
    assert intervals.sign_test_p(8, 2) == pytest.approx(112 / 1024)
    assert intervals.sign_test_p(2, 8) == intervals.sign_test_p(8, 2)
    assert intervals.sign_test_p(5, 5) == 1.0 and intervals.sign_test_p(0, 0) == 1.0
    assert intervals.sign_test_p(6, 0) == pytest.approx(2 / 64)


def test_the_bootstrap_is_seeded_and_contains_the_mean() -> None:
    differences = [0.13, 0.31, -0.07, 0.22, 0.0, 0.45, 0.1, -0.18, 0.29, 0.11]
    interval = intervals.bootstrap_interval(differences)
    assert interval == intervals.bootstrap_interval(differences)  # seeded
    assert interval != intervals.bootstrap_interval(differences, seed=1)
    mean = sum(differences) / len(differences)
    assert interval[0] < mean < interval[1]
    assert intervals.bootstrap_interval([0.2] * 5) == pytest.approx((0.2, 0.2))
    wider = intervals.bootstrap_interval(differences, level=0.99)
    assert wider[0] <= interval[0] and interval[1] <= wider[1]


def test_paired_difference_interval_brackets_the_mean() -> None:
    result = intervals.paired_difference([0.5, 0.6, 0.7, 0.8], [0.4, 0.6, 0.5, 0.8])
    assert result["mean"] == pytest.approx(-0.075) and result["n"] == 4
    assert result["low"] <= result["mean"] <= result["high"] <= 0.0
    with pytest.raises(ValueError, match="equal lengths"):
        intervals.paired_difference([0.1], [0.1, 0.2])
