"""Seed statistics: the mean with a 95 % Student-t interval, and paired differences.

With n seeds the interval is mean +- t_{0.975, n-1} * sd / sqrt(n) (scipy.stats.t); a paired difference
is the same interval over the per-seed differences a_s - b_s, where a_s and b_s share seed s (and so
the same iteration-1 encoder and the same probe label draws).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float  # 95 % interval (equal to the mean with one value)
    high: float
    n: int

    def verdict(self) -> str:
        """'higher' when the interval lies above 0, 'lower' below, else 'no detectable difference'."""
        if self.n < 2:
            return "one seed: no interval"
        if self.low > 0:
            return "higher"
        if self.high < 0:
            return "lower"
        return "no detectable difference"


def interval(values: list[float]) -> Interval:
    """Mean and 95 % t-interval of `values` (one per seed)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("no values")
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, mean, mean, 1)
    half = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Interval(mean, mean - half, mean + half, int(x.size))


def paired(a: dict[int, float], b: dict[int, float]) -> Interval:
    """Interval of a_s - b_s over the seeds s both have."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("the two variants share no seed")
    return interval([a[s] - b[s] for s in seeds])
