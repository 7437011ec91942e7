"""The STG_H generator: the template, value formats, label rule and spurious mechanisms, and how
closely it matches the released distribution."""

from __future__ import annotations

import json
import random
import re
import statistics

import pytest

from cattune.data import stg_h
from cattune.data.records import Relation
from cattune.data.tables import parse_table

N_TRAIN, N_TEST = 3000, 1500
WEIGHTS = {name: spec.weight for name, spec in stg_h.CAUSE_SPECS.items()}


@pytest.fixture(scope="module")
def splits():
    return stg_h.generate_splits(5, N_TRAIN, N_TEST)


def number(value: str) -> float:
    return float(re.match(r"-?\d+(?:\.\d+)?", value).group())


def values(record: dict) -> dict[str, float]:
    return {f.name: number(f.value) for f in parse_table(record["input"])}


def printed(record: dict) -> dict[str, str]:
    return {f.name: f.value for f in parse_table(record["input"])}


def formula(v: dict[str, float]) -> int:
    score = sum(WEIGHTS[n] * v[n] for n in WEIGHTS)
    return round((min(max(score, -20), 30) + 20) / 50 * 100)


def slope_and_residual(xs, ys) -> tuple[float, float, float]:
    """Least-squares slope, residual standard deviation and the slope's standard error."""
    slope, intercept = statistics.linear_regression(xs, ys)
    residuals = [y - (slope * x + intercept) for x, y in zip(xs, ys)]
    residual_sd = statistics.pstdev(residuals)
    return slope, residual_sd, residual_sd / (statistics.pstdev(xs) * len(xs) ** 0.5)


TEMPLATE = (
    "Industrial Emissions: {}; Vehicle Emissions: {}; Coal Dependency: {}; Agricultural Burning: {}; "
    "Urban Green Coverage: {}; Meteorological Dispersion: {}. Ice Cream Sales Index: {}; Allergy Complaints "
    "Level: {}; Renewable Stock Index: {}; Public Transport Subscriptions (k): {}; Water Awareness Score: {}. "
    "City Anniversary: {}; Average Internet Speed: {}; Number of Libraries: {}. Given these diverse conditions, "
    "what is the projected Air Quality Index (AQI) on a 0-100 scale? Answer: "
)


def skeleton(text: str) -> str:
    for f in reversed(parse_table(text)):
        text = text[:f.value_start] + "{}" + text[f.end:]
    return text


def test_template_and_value_formats(splits):
    formats = {
        "Coal Dependency": r"-?\d+\.\d%", "Urban Green Coverage": r"-?\d+\.\d%", "Renewable Stock Index": r"-?\d+",
        "City Anniversary": r"\d+th", "Average Internet Speed": r"\d+\.\dMbps", "Number of Libraries": r"\d+",
    }
    for records in splits.values():
        for rec in records:
            assert skeleton(rec["input"]) == TEMPLATE
            for name, value in printed(rec).items():
                assert re.fullmatch(formats.get(name, r"-?\d+\.\d"), value), (name, value)
            assert isinstance(rec["target"], int) and 0 <= rec["target"] <= 100


def test_aqi_examples():
    means = {name: (spec.low + spec.high) / 2 for name, spec in stg_h.CAUSE_SPECS.items()}
    assert stg_h.aqi(means) == 42  # score 1 -> (1 + 20) / 50 * 100
    assert stg_h.aqi({**means, "Industrial Emissions": 1000}) == 100  # clipped at 30
    assert stg_h.aqi({**means, "Meteorological Dispersion": 1000}) == 0  # clipped at -20


def test_label_rule_on_printed_values(splits):
    for records in splits.values():
        diffs = [rec["target"] - formula(values(rec)) for rec in records]
        assert set(diffs) <= {-1, 0, 1}
        # Labels come from the unrounded values: a few percent sit across a rounding boundary.
        assert 0.005 < sum(d != 0 for d in diffs) / len(diffs) < 0.06


def test_label_from_printed_is_exact():
    records = stg_h.generate_splits(5, 2000, 0, label_from_printed=True, extra_shifts=())["train"]
    assert all(rec["target"] == formula(values(rec)) for rec in records)


def test_cause_distributions(splits):
    vals = [values(r) for r in splits["train"] + splits["test_ood"]]
    for name, spec in stg_h.CAUSE_SPECS.items():
        xs = [v[name] for v in vals]
        width = spec.high - spec.low
        assert abs(statistics.fmean(xs) - (spec.low + spec.high) / 2) < 0.6
        # Uniform variance plus the noise variance.
        expected_sd = (width ** 2 / 12 + spec.noise ** 2) ** 0.5
        assert abs(statistics.pstdev(xs) / expected_sd - 1) < 0.05
        inside = sum(spec.low <= x <= spec.high for x in xs) / len(xs)
        assert 0.85 < inside < 0.995  # the noise pushes a few values past the uniform's ends


@pytest.mark.parametrize("split", ["train", "test_iid"])
def test_spurious_are_noisy_linear_functions_of_one_cause(splits, split):
    vals = [values(r) for r in splits[split]]
    for name, spec in stg_h.SPURIOUS_SPECS.items():
        slope, residual_sd, se = slope_and_residual([v[spec.cause] for v in vals], [v[name] for v in vals])
        assert abs(slope - spec.slope) < 4 * se, (name, slope, se)
        rounding = 1 / 12 if spec.integer else 0.01 / 12
        assert abs(residual_sd / (spec.noise ** 2 + rounding) ** 0.5 - 1) < 0.1, (name, residual_sd)


def test_ood_spurious_are_independent_shifted_uniforms(splits):
    vals = [values(r) for r in splits["test_ood"]]
    for name, spec in stg_h.SPURIOUS_SPECS.items():
        xs = [v[name] for v in vals]
        assert spec.ood_low <= min(xs) and max(xs) <= spec.ood_high
        assert abs(statistics.fmean(xs) - (spec.ood_low + spec.ood_high) / 2) < 0.15
        assert abs(statistics.correlation(xs, [v[spec.cause] for v in vals])) < 0.1


def test_extra_shifts(splits):
    train = [values(r) for r in splits["train"]]
    anti = [values(r) for r in splits["test_ood_anticorrelated"]]
    in_range = [values(r) for r in splits["test_ood_in_range"]]
    for name, spec in stg_h.SPURIOUS_SPECS.items():
        r_train = statistics.correlation([v[name] for v in train], [v[spec.cause] for v in train])
        r_anti = statistics.correlation([v[name] for v in anti], [v[spec.cause] for v in anti])
        r_in = statistics.correlation([v[name] for v in in_range], [v[spec.cause] for v in in_range])
        assert r_anti == pytest.approx(-r_train, abs=0.08), name
        assert abs(r_in) < 0.1, name
        # Both keep the spurious values where training had them.
        for shifted in (anti, in_range):
            mean_train = statistics.fmean(v[name] for v in train)
            sd_train = statistics.pstdev(v[name] for v in train)
            assert abs(statistics.fmean(v[name] for v in shifted) - mean_train) < 0.15 * sd_train


def test_irrelevant_variables(splits):
    vals = [values(r) for r in splits["train"]]
    assert {v["City Anniversary"] for v in vals} == set(range(1, 101))
    assert {v["Number of Libraries"] for v in vals} == set(range(10, 51))
    speeds = [v["Average Internet Speed"] for v in vals]
    assert abs(statistics.fmean(speeds) - 100) < 1 and abs(statistics.pstdev(speeds) - (40 ** 2 / 12 + 9) ** 0.5) < 0.7


def test_annotation_and_noncausal(splits):
    for records in splits.values():
        for rec in records[:300]:
            p = printed(rec)
            assert rec["important"] == [{f"Answer: {rec['target']}": [p[n] for n in stg_h.CAUSES]}]
            assert rec["noncausal"] == {"spurious": [p[n] for n in stg_h.SPURIOUS],
                                        "irrelevant": [p[n] for n in stg_h.IRRELEVANT]}


def test_spans_on_a_string_target():
    rec = stg_h.generate_splits(0, 1, 0, extra_shifts=())["train"][0]
    relations, _ = stg_h.spans(rec["input"], str(rec["target"]))
    assert relations[0] == Relation(f"Answer: {rec['target']}", tuple(printed(rec)[n] for n in stg_h.CAUSES))
    with pytest.raises(ValueError, match="not an STG_H prompt"):
        stg_h.spans("Smoking: 3, Weight: 2 Answer: ", "5")


def test_seeded():
    assert stg_h.generate_splits(3, 20, 5) == stg_h.generate_splits(3, 20, 5)
    assert stg_h.generate_splits(3, 20, 5)["train"] != stg_h.generate_splits(4, 20, 5)["train"]
    assert stg_h.generate_splits(3, 20, 5)["train"] == stg_h.generate_splits(3, 20, 9, extra_shifts=())["train"]


def test_redraw_spurious(splits):
    rng = random.Random(0)
    for rec in splits["train"][:1000]:
        new = stg_h.redraw_spurious(rec["input"], rng)
        before, after = printed(rec), {f.name: f.value for f in parse_table(new)}
        assert skeleton(new) == TEMPLATE
        assert any(before[n] != after[n] for n in stg_h.SPURIOUS)
        assert all(before[n] == after[n] for n in stg_h.CAUSES + stg_h.IRRELEVANT)
        for name, spec in stg_h.SPURIOUS_SPECS.items():
            assert spec.ood_low <= number(after[name]) <= spec.ood_high


def test_redraw_spurious_same_length(splits):
    rng = random.Random(4)
    changed = 0
    for rec in splits["test_ood"][:500]:
        new = stg_h.redraw_spurious_same_length(rec["input"], rng)
        before, after = printed(rec), {f.name: f.value for f in parse_table(new)}
        assert skeleton(new) == TEMPLATE and len(new) == len(rec["input"])
        assert all(len(before[n]) == len(after[n]) for n in stg_h.SPURIOUS)
        assert all(before[n] == after[n] for n in stg_h.CAUSES + stg_h.IRRELEVANT)
        changed += new != rec["input"]
    assert changed == 500


def test_redraw_noncausal(splits):
    rng = random.Random(1)
    for rec in splits["train"][:500]:
        new = stg_h.redraw_noncausal(rec["input"], rng)
        before, after = printed(rec), {f.name: f.value for f in parse_table(new)}
        assert all(before[n] == after[n] for n in stg_h.CAUSES)
        assert sum(before[n] != after[n] for n in stg_h.SPURIOUS + stg_h.IRRELEVANT) >= 6
        assert skeleton(new) == TEMPLATE


# --- the released files ---------------------------------------------------------------------------

RELEASED = ("STG_H_train.jsonl", "STG_H_iid_test.jsonl", "STG_H_ood_test.jsonl")


def load_release(release_dir, name):
    with open(release_dir / "STG_H" / name, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_release_template_and_annotations(release_dir):
    for name in RELEASED:
        for rec in load_release(release_dir, name):
            assert skeleton(rec["input"]) == TEMPLATE
            relations, _ = stg_h.spans(rec["input"], rec["target"])
            assert [{r.effect: list(r.causes)} for r in relations] == rec["important"]


def test_generated_distribution_matches_release(release_dir, splits):
    pairs = (("STG_H_train.jsonl", "train"), ("STG_H_ood_test.jsonl", "test_ood"))
    for name, split in pairs:
        released = [values(r) for r in load_release(release_dir, name)]
        generated = [values(r) for r in splits[split]]
        for var in stg_h.VARIABLES:
            rel = [v[var] for v in released]
            gen = [v[var] for v in generated]
            sd = statistics.pstdev(rel)
            assert abs(statistics.fmean(gen) - statistics.fmean(rel)) < 0.1 * sd, (split, var)
            assert abs(statistics.pstdev(gen) / sd - 1) < 0.08, (split, var)
        if split == "train":
            for var, spec in stg_h.SPURIOUS_SPECS.items():
                fits = [slope_and_residual([v[spec.cause] for v in data], [v[var] for v in data])
                        for data in (released, generated)]
                (s_rel, r_rel, se_rel), (s_gen, r_gen, se_gen) = fits
                assert abs(s_gen - s_rel) < 4 * (se_rel ** 2 + se_gen ** 2) ** 0.5, (var, s_rel, s_gen)
                assert abs(r_gen / r_rel - 1) < 0.06, (var, r_rel, r_gen)
        rel_targets = [r["target"] for r in load_release(release_dir, name)]
        gen_targets = [r["target"] for r in splits[split]]
        assert abs(statistics.fmean(gen_targets) - statistics.fmean(rel_targets)) < 1.5
        assert abs(statistics.pstdev(gen_targets) - statistics.pstdev(rel_targets)) < 1.0


def test_release_label_rule_mismatch_rate_matches(release_dir):
    released = load_release(release_dir, "STG_H_train.jsonl")
    rate = sum(r["target"] != formula(values(r)) for r in released) / len(released)
    assert 0.02 < rate < 0.045  # the same few percent as the generator's (test_label_rule_on_printed_values)
