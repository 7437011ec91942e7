import math

import pytest

from cattune.stats import mcnemar_exact, paired_bootstrap, paired_seed_test, seed_summary, wilson_interval


def test_wilson_interval_known_values():
    # Reference values from the closed form (also what statsmodels' proportion_confint(method="wilson") gives).
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(400, 400)
    assert high == 1.0 and low == pytest.approx(0.9905, abs=1e-4)
    low99, high99 = wilson_interval(5, 10, confidence=0.99)
    assert low99 < 0.2366 and high99 > 0.7634


@pytest.mark.parametrize("successes, n", [(-1, 10), (11, 10), (0, 0)])
def test_wilson_interval_rejects_bad_counts(successes, n):
    with pytest.raises(ValueError):
        wilson_interval(successes, n)


def test_mcnemar_exact_reproduces_feasibility_report():
    # FEASIBILITY.md: 79 items only the baseline (A) got right, 53 only CAT (B) got right, p = 0.029.
    a = [True] * 79 + [False] * 53 + [True] * 150 + [False] * 118
    b = [False] * 79 + [True] * 53 + [True] * 150 + [False] * 118
    result = mcnemar_exact(a, b)
    assert (result["b01"], result["b10"], result["n"]) == (53, 79, 400)
    assert result["p_value"] == pytest.approx(0.029, abs=0.001)
    assert result["a_accuracy"] == pytest.approx(229 / 400)


def test_mcnemar_exact_small_cases():
    assert mcnemar_exact([True, False], [True, False])["p_value"] == 1.0
    # 5 discordant items all favouring B: p = 2 * 0.5**5.
    assert mcnemar_exact([False] * 5, [True] * 5)["p_value"] == pytest.approx(2 / 32)
    with pytest.raises(ValueError, match="same items"):
        mcnemar_exact([True], [True, False])


def test_paired_bootstrap_is_seeded_and_brackets_the_difference():
    a = [True, False, True, False, False, True, False, False] * 10
    b = [True, True, True, False, True, True, False, True] * 10
    first = paired_bootstrap(a, b, n_resamples=2000, seed=3)
    assert first == paired_bootstrap(a, b, n_resamples=2000, seed=3)
    assert first["mean_difference"] == pytest.approx(3 / 8)
    assert 0 < first["ci_low"] < 3 / 8 < first["ci_high"]
    assert first["p_value"] < 0.01
    same = paired_bootstrap(a, a, n_resamples=500)
    assert same["ci_low"] == same["ci_high"] == 0.0 and same["p_value"] == 1.0


def test_seed_summary():
    s = seed_summary([0.70, 0.74, 0.72])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.72)
    assert s["std"] == pytest.approx(0.02)
    assert s["se"] == pytest.approx(0.02 / math.sqrt(3))
    assert s["ci_low"] < 0.72 < s["ci_high"]
    one = seed_summary([0.5])
    assert one["std"] is None and one["se"] is None


def test_paired_seed_test():
    a = [0.60, 0.62, 0.65, 0.61, 0.63]
    b = [0.70, 0.71, 0.74, 0.69, 0.75]
    r = paired_seed_test(a, b)
    assert r["mean_difference"] == pytest.approx(0.096)
    assert r["t_test_p_value"] < 0.001
    # All five differences positive: the exact sign-flip test cannot go below 2 / 2**5.
    assert r["sign_flip_p_value"] == pytest.approx(2 / 32)
    assert r["sign_flip_exact"]
    mixed = paired_seed_test([0.5, 0.6, 0.7], [0.6, 0.5, 0.7])
    assert mixed["mean_difference"] == pytest.approx(0.0) and mixed["sign_flip_p_value"] == 1.0
    with pytest.raises(ValueError, match="at least 2 seeds"):
        paired_seed_test([0.5], [0.6])


def test_paired_seed_test_has_no_t_p_value_when_every_seed_differs_by_the_same_amount():
    # Two seeds, each 1.25 points better (accuracies on 400 items move in steps of 0.25): the
    # t statistic has no variance to divide by; the sign-flip test still answers (2 / 2**2).
    tied = paired_seed_test([0.925, 0.935], [0.9375, 0.9475])
    assert tied["mean_difference"] == pytest.approx(0.0125)
    assert tied["t_test_p_value"] is None
    assert tied["sign_flip_p_value"] == pytest.approx(0.5)
    # No difference at all is no evidence of one.
    assert paired_seed_test([0.9, 0.8], [0.9, 0.8])["t_test_p_value"] == 1.0
