import pytest

from cattune.report.pooled import pooled_comparison, pooled_table, seed_values
from cattune.stats import paired_seed_test


def _results(per_seed_by_arm):
    """results.json's shape: arms -> splits -> test_ood -> per_seed -> seed -> measures."""
    return {"arms": {arm: {"splits": {"test_ood": {"per_seed": seeds}}} for arm, seeds in per_seed_by_arm.items()}}


FIRST = _results({
    "baseline": {"42": {"accuracy": 0.70, "flip_rate": 0.20}, "43": {"accuracy": 0.60, "flip_rate": 0.30}},
    "cat": {"42": {"accuracy": 0.90, "flip_rate": 0.01}, "43": {"accuracy": 0.85, "flip_rate": 0.02}},
})
SECOND = _results({
    "baseline": {"45": {"accuracy": 0.80, "flip_rate": 0.15}, "42": {"accuracy": 0.0, "flip_rate": 1.0}},
    "cat": {"45": {"accuracy": 0.75, "flip_rate": 0.00}, "42": {"accuracy": 0.0, "flip_rate": 1.0}},
})


def test_seed_values_pool_files_and_keep_the_first_run_of_a_seed():
    assert seed_values([FIRST, SECOND], "baseline", "test_ood", "accuracy") == {"42": 0.70, "43": 0.60, "45": 0.80}
    assert seed_values([FIRST], "absent-arm", "test_ood", "accuracy") == {}


def test_pooled_comparison_tests_the_seed_pairs_in_points():
    rows = pooled_comparison([FIRST, SECOND], "baseline", "cat",
                             measures=[("test_ood", "accuracy"), ("test_ood", "flip_rate"), ("test_iid", "accuracy")])
    assert [(r["split"], r["measure"]) for r in rows] == [("test_ood", "accuracy"), ("test_ood", "flip_rate")]
    accuracy = rows[0]
    assert accuracy["seeds"] == ["42", "43", "45"]
    assert accuracy["reference_mean"] == pytest.approx(70.0)
    assert accuracy["arm_mean"] == pytest.approx(250 / 3)
    expected = paired_seed_test([70, 60, 80], [90, 85, 75])
    assert accuracy["mean_difference"] == pytest.approx(expected["mean_difference"])
    assert accuracy["t_test_p_value"] == pytest.approx(expected["t_test_p_value"])
    table = pooled_table(rows, "baseline", "cat")
    assert table.splitlines()[0].startswith("| split | measure | seeds | baseline | cat |")
    assert "| test_ood | flip_rate | 42,43,45 | 21.7 | 1.0 |" in table


def test_pooled_comparison_needs_two_shared_seeds():
    only_one = _results({"baseline": {"1": {"accuracy": 0.5}}, "cat": {"1": {"accuracy": 0.6}}})
    assert pooled_comparison([only_one], "baseline", "cat") == []


def test_pooled_table_says_when_the_paired_t_test_is_undefined():
    tied = _results({"baseline": {"42": {"accuracy": 0.925}, "44": {"accuracy": 0.935}},
                     "longer": {"42": {"accuracy": 0.9375}, "44": {"accuracy": 0.9475}}})
    rows = pooled_comparison([tied], "baseline", "longer", measures=[("test_ood", "accuracy")])
    assert rows[0]["t_test_p_value"] is None
    assert "| +1.2 [+1.2, +1.2] | undefined | 0.5 |" in pooled_table(rows, "baseline", "longer")
