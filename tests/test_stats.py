"""The bootstrap interval of a mean over problems: right width on known cases, shrinking with n, seeded."""

from __future__ import annotations

import math

import numpy as np
import pytest

from thinkctl.stats import bootstrap_mean


def test_interval_matches_the_normal_approximation_of_a_known_variance():
    # half the problems right, half wrong: mean 0.5, population sd 0.5, so the 95% interval is about
    # 0.5 ± 1.96 · 0.5 / √n
    for n in (100, 400):
        est = bootstrap_mean([0.0, 1.0] * (n // 2))
        half = 1.96 * 0.5 / math.sqrt(n)
        assert est.mean == 0.5 and est.n == n
        assert est.low == pytest.approx(0.5 - half, abs=0.012) and est.high == pytest.approx(0.5 + half, abs=0.012)


def test_interval_width_shrinks_like_one_over_root_n():
    rng = np.random.default_rng(1)
    per_problem = rng.integers(0, 9, size=480) / 8  # avg@8 of each problem
    small, large = bootstrap_mean(per_problem[:30]), bootstrap_mean(per_problem)
    ratio = (small.high - small.low) / (large.high - large.low)
    assert 3.0 < ratio < 5.0  # √(480/30) = 4
    assert small.low <= small.mean <= small.high and large.low <= large.mean <= large.high


def test_no_spread_no_interval_and_seeded():
    constant = bootstrap_mean([0.75] * 30)
    assert (constant.low, constant.mean, constant.high) == (0.75, 0.75, 0.75)
    values = np.random.default_rng(0).random(25)
    assert bootstrap_mean(values, seed=3) == bootstrap_mean(values, seed=3)
    assert bootstrap_mean(values, seed=3) != bootstrap_mean(values, seed=4)
    assert math.isnan(bootstrap_mean([]).mean)
    with pytest.raises(ValueError, match="level"):
        bootstrap_mean(values, level=95)
