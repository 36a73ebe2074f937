"""The 95 % intervals every reported figure carries, in one place so that each part of the report states its
uncertainty the same way: exact (Clopper–Pearson) intervals for a proportion, seeded percentile-bootstrap intervals
for a mean of paired differences, and the exact two-sided sign test (McNemar's, on discordant items)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0


def exact(value: float) -> float:
    """``value`` without float noise: figures made of whole items must not come out as 1e-17 and turn "contains 0"
    into "above 0" (nor print as -0.000)."""
    return round(value, 9) + 0.0


def _binomial_tail(successes: int, n: int, p: float, upper: bool) -> float:
    """P(X ≥ successes) (``upper``) or P(X ≤ successes) for X ~ Binomial(n, p), summed in log space (n may be
    thousands)."""
    if p <= 0.0:
        return 1.0 if (not upper or successes == 0) else 0.0
    if p >= 1.0:
        return 1.0 if (upper or successes == n) else 0.0
    ks = range(successes, n + 1) if upper else range(0, successes + 1)
    logs = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p)
            + (n - k) * math.log1p(-p) for k in ks]
    top = max(logs)
    return math.exp(top) * sum(math.exp(value - top) for value in logs)


def exact_binomial(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Clopper–Pearson interval of a proportion ``successes / n``: never narrower than it should be, and right at 0
    and n, where the normal approximation is not."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"a proportion needs 0 <= successes <= n and n > 0, got {successes}/{n}")
    alpha = 1.0 - level

    def solve(upper: bool) -> float:
        # Lower bound: the p at which P(X >= successes) = alpha/2 (rises with p); upper: P(X <= successes) = alpha/2.
        low, high = 0.0, 1.0
        for _ in range(60):
            mid = (low + high) / 2
            tail = _binomial_tail(successes, n, mid, upper)
            if (tail < alpha / 2) == upper:
                low = mid
            else:
                high = mid
        return (low + high) / 2

    lower = 0.0 if successes == 0 else solve(True)
    higher = 1.0 if successes == n else solve(False)
    return exact(lower), exact(higher)


def bootstrap_interval(differences: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED,
                       level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of the mean of ``differences`` over ``resamples`` seeded resamples of the units (items
    or relations). The differences are paired (both conditions on the same unit), so the pairing is kept."""
    values = np.asarray(differences, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no differences to resample")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return exact(float(low)), exact(float(high))


def paired_difference(a: Sequence[float], b: Sequence[float], *, resamples: int = RESAMPLES, seed: int = SEED
                      ) -> dict[str, float]:
    """Mean of ``b − a`` over paired units and its percentile-bootstrap interval."""
    if len(a) != len(b):
        raise ValueError(f"paired figures need equal lengths, got {len(a)} and {len(b)}")
    diffs = [float(y) - float(x) for x, y in zip(a, b, strict=True)]
    low, high = bootstrap_interval(diffs, resamples, seed)
    return {"mean": exact(sum(diffs) / len(diffs)), "low": low, "high": high, "n": len(diffs)}


def sign_test_p(greater: int, less: int) -> float:
    """Exact two-sided sign test (binomial, p = ½) on the non-tied units — McNemar's exact test when the units are
    items only one of two methods gets right: how surprising a split this uneven is if neither is better."""
    n = greater + less
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(greater, less) + 1)) / 2.0**n
    return min(1.0, 2 * tail)
