"""Uncertainty for accuracies and comparisons: intervals, paired tests, summaries across seeds.

Every accuracy the project reports comes with its n and a 95% interval; every comparison of two
models on the same items is paired (the items are shared, so their difficulty cancels out):

* :func:`wilson_interval`: binomial proportion interval (good coverage at small n and near 0/1,
  where the normal approximation fails, e.g. a 0% flip rate).
* :func:`mcnemar_exact`: exact two-sided McNemar test on per-item correctness of two models.
* :func:`paired_bootstrap`: bootstrap CI of the mean per-item difference.
* :func:`seed_summary` and :func:`paired_seed_test`: runs repeated with several seeds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as _scipy_stats

# Above this many seeds the exact sign-flip test enumerates too many patterns; sample instead.
_EXACT_SIGN_FLIP_MAX_N = 16


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``successes`` out of ``n`` Bernoulli trials."""
    if n <= 0:
        raise ValueError(f"a proportion needs n >= 1 trials, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in 0..n={n}, got {successes}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    z = float(_scipy_stats.norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # The bounds at 0/n and n/n are exactly 0 and 1; floating error must not move them.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def _paired_bools(a: Sequence[bool], b: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    if len(a) != len(b):
        raise ValueError(f"paired results need the same items: {len(a)} vs {len(b)}")
    if len(a) == 0:
        raise ValueError("paired results are empty")
    return np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict[str, Any]:
    """Exact McNemar test of two models judged on the same items.

    ``b01`` counts items only B gets right, ``b10`` items only A gets right; under the null
    hypothesis of equal accuracy each discordant item is a fair coin, so the two-sided p-value is
    the exact binomial one (1.0 when there are no discordant items).
    """
    a, b = _paired_bools(a_correct, b_correct)
    b01 = int(np.sum(~a & b))
    b10 = int(np.sum(a & ~b))
    discordant = b01 + b10
    if discordant == 0:
        p_value = 1.0
    else:
        p_value = float(_scipy_stats.binomtest(min(b01, b10), discordant, 0.5).pvalue)
    return {
        "n": int(a.size),
        "a_accuracy": float(a.mean()),
        "b_accuracy": float(b.mean()),
        "b01": b01,
        "b10": b10,
        "p_value": p_value,
        "test": "exact McNemar (two-sided binomial on discordant items)",
    }


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, n_resamples: int = 10000, seed: int = 0, confidence: float = 0.95
) -> dict[str, Any]:
    """Bootstrap the mean of ``b - a`` over paired items (percentile interval).

    ``a`` and ``b`` are per-item scores (booleans for correctness) of two models on the same items.
    The two-sided p-value is the bootstrap share of resampled differences on the far side of zero,
    doubled (it cannot go below ``2 / n_resamples``'s resolution).
    """
    if len(a) != len(b):
        raise ValueError(f"paired results need the same items: {len(a)} vs {len(b)}")
    if len(a) == 0:
        raise ValueError("paired results are empty")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    rng = np.random.default_rng(seed)
    n = diff.size
    means = np.empty(n_resamples)
    # Resample in chunks so 10k x 5k items does not need 400 MB of indices at once.
    chunk = max(1, 2_000_000 // n)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diff[idx].mean(axis=1)
    alpha = 1 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    p_value = min(1.0, 2 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    return {
        "n": int(n),
        "mean_difference": float(diff.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "confidence": confidence,
        "p_value": p_value,
        "n_resamples": n_resamples,
        "seed": seed,
    }


def seed_summary(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean, sample standard deviation, standard error and t interval of one metric over seeds.

    ``std``, ``se`` and the interval are None for a single seed: one run says nothing about
    variance.
    """
    x = np.asarray(values, dtype=float)
    n = int(x.size)
    if n == 0:
        raise ValueError("no values to summarise")
    mean = float(x.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "std": None, "se": None, "ci_low": None, "ci_high": None}
    std = float(x.std(ddof=1))
    se = std / math.sqrt(n)
    t = float(_scipy_stats.t.ppf(0.5 + confidence / 2, n - 1))
    return {"n": n, "mean": mean, "std": std, "se": se, "ci_low": mean - t * se, "ci_high": mean + t * se}


def paired_seed_test(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Compare two arms run with the same seeds (``a[i]`` and ``b[i]`` share seed i).

    Reports the mean difference ``b - a`` with its t interval, the paired t-test p-value (None
    where every seed pair differs by the same nonzero amount: the test is undefined there) and the
    exact sign-flip permutation p-value (no normality assumption; with n seeds its smallest
    possible value is ``2 / 2**n``, so 5 seeds cannot go below 0.0625).
    """
    if len(a) != len(b):
        raise ValueError(f"paired seeds need the same number of runs: {len(a)} vs {len(b)}")
    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    n = int(diff.size)
    if n < 2:
        raise ValueError(f"a paired test across seeds needs at least 2 seeds per arm, got {n}")
    summary = seed_summary(diff)
    t_p: float | None
    # The same difference at every seed (accuracies on 400 items move in steps of 0.25 points, so
    # two seeds can tie) leaves the t statistic without a variance: no p-value, not p = 0.
    if summary["std"] <= 1e-12 * max(1.0, abs(summary["mean"])):
        t_p = 1.0 if abs(summary["mean"]) <= 1e-12 else None
    else:
        t_p = float(_scipy_stats.ttest_rel(np.asarray(b, dtype=float), np.asarray(a, dtype=float)).pvalue)
    observed = abs(diff.sum())
    if n <= _EXACT_SIGN_FLIP_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        signs = np.random.default_rng(0).choice((1.0, -1.0), size=(100_000, n))
    flipped = np.abs(signs @ diff)
    sign_flip_p = float(np.mean(flipped >= observed - 1e-12))
    return {
        "n": n,
        "mean_difference": summary["mean"],
        "std_difference": summary["std"],
        "se": summary["se"],
        "ci_low": summary["ci_low"],
        "ci_high": summary["ci_high"],
        "t_test_p_value": t_p,
        "sign_flip_p_value": sign_flip_p,
        "sign_flip_exact": n <= _EXACT_SIGN_FLIP_MAX_N,
    }
