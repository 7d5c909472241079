"""Seed statistics of ``alignx compare``: the mean of a group of jobs and its 95% Student-t interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# The mean of a seed group and the half-width of its 95% interval, t_{0.975, n-1} * s / sqrt(n)
# with s the sample standard deviation (n-1 in the denominator); one value has no interval.
# The t quantiles are a table for 1..30 degrees of freedom (scipy's t.ppf(0.975, df) to 6
# decimals; scipy is not a dependency of alignx) and, beyond 30, the Cornish-Fisher expansion of
# t around the normal quantile (Abramowitz & Stegun 26.7.5), within 2e-6 of the exact value there.

#: the normal distribution's 0.975 quantile: the limit of t_{0.975, df} as df grows
Z_975 = 1.959963984540054

#: t_{0.975, df} for df = 1..30 (index df - 1)
T_975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
    2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
    2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
)


@dataclass(frozen=True)
class Summary:
    """The mean of ``n`` values and the half-width of its 95% interval (None when n < 2)."""

    mean: float
    half_width: float | None
    n: int

    @property
    def interval(self) -> tuple[float, float] | None:
        """``(mean - half_width, mean + half_width)``, or None without an interval."""
        if self.half_width is None:
            return None
        return self.mean - self.half_width, self.mean + self.half_width


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean of one or more values."""
    if not values:
        raise ValueError("the mean of no values is undefined")
    return math.fsum(values) / len(values)


def sample_sd(values: Sequence[float]) -> float:
    """The sample standard deviation (n - 1 in the denominator) of two or more values."""
    if len(values) < 2:
        raise ValueError(f"a sample standard deviation needs at least 2 values, got {len(values)}")
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def t_quantile_975(df: int) -> float:
    """Student's t 0.975 quantile with ``df`` degrees of freedom (two-sided 95%)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def t_half_width(values: Sequence[float]) -> float | None:
    """Half-width of the 95% Student-t interval of the mean: ``t_{0.975,n-1} * s / sqrt(n)``; None for n < 2."""
    n = len(values)
    if n < 2:
        return None
    return t_quantile_975(n - 1) * sample_sd(values) / math.sqrt(n)


def summarize(values: Sequence[float]) -> Summary:
    """Mean, 95% half-width (None for one value) and count of one or more values."""
    return Summary(mean=mean(values), half_width=t_half_width(values), n=len(values))
