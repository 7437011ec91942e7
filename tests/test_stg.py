"""The STG generator follows METHOD.md section 8, checked on thousands of samples and against the
released files."""

from __future__ import annotations

import json
import random
import statistics
from itertools import permutations

import pytest

from cattune.data import stg
from cattune.data.records import Relation
from cattune.data.tables import parse_table

N_TRAIN, N_TEST = 4000, 3000


@pytest.fixture(scope="module")
def splits():
    return stg.generate_splits(7, N_TRAIN, N_TEST)


def values(record: dict) -> dict[str, int]:
    return {f.name: int(f.value) for f in parse_table(record["input"])}


def correlation(xs, ys) -> float:
    return statistics.correlation([float(x) for x in xs], [float(y) for y in ys])


def test_split_names_and_sizes(splits):
    assert list(splits) == ["train", "test_iid", "test_ood", "test_ood_anticorrelated", "test_ood_in_range"]
    assert len(splits["train"]) == N_TRAIN
    assert all(len(records) == N_TEST for name, records in splits.items() if name != "train")


def test_prompt_text(splits):
    for records in splits.values():
        for rec in records:
            text = rec["input"]
            assert text.startswith("Here is the statistical data for a person. Please predict the probability of cancer. ")
            assert text.endswith(" Answer: ")
            body = text[len(stg.PROMPT_PREFIX):-len(stg.PROMPT_SUFFIX)]
            pairs = body.split(", ")
            assert len(pairs) == 8
            assert sorted(p.rsplit(": ", 1)[0] for p in pairs) == sorted(stg.VARIABLES)
            assert all(p.rsplit(": ", 1)[1].isdigit() for p in pairs)


def test_pairs_are_in_random_order(splits):
    orders = [tuple(f.name for f in parse_table(r["input"])) for r in splits["train"]]
    assert len(set(orders)) > 0.9 * len(orders)  # 8! = 40320 orders
    for position in range(8):
        assert {order[position] for order in orders} == set(stg.VARIABLES)


@pytest.mark.parametrize("split", ["train", "test_iid", "test_ood", "test_ood_anticorrelated", "test_ood_in_range"])
def test_causes_and_irrelevant_are_uniform_1_to_10(splits, split):
    vals = [values(r) for r in splits[split]]
    for name in stg.CAUSES + stg.IRRELEVANT:
        counts = [sum(v[name] == k for v in vals) for k in range(1, 11)]
        # Each of 10 values expected N/10 times; allow a wide band (about 5 standard deviations).
        expected = len(vals) / 10
        assert all(abs(c - expected) < 5 * expected ** 0.5 for c in counts), (name, counts)


@pytest.mark.parametrize("split", ["train", "test_iid"])
def test_spurious_is_int_of_ratio_times_cause_in_train_and_iid(splits, split):
    for rec in splits[split]:
        v = values(rec)
        assert v["Yellow fingers"] == int(1.5 * v["Smoking"])
        assert v["Clothing size"] == int(1.0 * v["Weight"])
        assert v["Hormones"] == int(0.5 * v["Exercise"])
    hormones = {values(r)["Hormones"] for r in splits[split]}
    assert hormones == {0, 1, 2, 3, 4, 5}


def test_ood_values_are_independent(splits):
    vals = [values(r) for r in splits["test_ood"]]
    for name, (cause, _) in stg.SPURIOUS_MECHANISM.items():
        assert {v[name] for v in vals} == set(range(1, 11))
        assert abs(correlation([v[name] for v in vals], [v[cause] for v in vals])) < 0.08
    train = [values(r) for r in splits["train"]]
    for name, (cause, _) in stg.SPURIOUS_MECHANISM.items():
        assert correlation([v[name] for v in train], [v[cause] for v in train]) > 0.95


def test_anticorrelated_shift_reverses_the_shortcut_within_training_support(splits):
    train_support = {name: {values(r)[name] for r in splits["train"]} for name in stg.SPURIOUS}
    vals = [values(r) for r in splits["test_ood_anticorrelated"]]
    for v in vals:
        for name, (cause, ratio) in stg.SPURIOUS_MECHANISM.items():
            assert v[name] == int(ratio * (11 - v[cause]))
            assert v[name] in train_support[name]
    for name, (cause, _) in stg.SPURIOUS_MECHANISM.items():
        assert correlation([v[name] for v in vals], [v[cause] for v in vals]) < -0.95


def test_in_range_shift_is_independent_with_training_values(splits):
    train_support = {name: {values(r)[name] for r in splits["train"]} for name in stg.SPURIOUS}
    vals = [values(r) for r in splits["test_ood_in_range"]]
    for name, (cause, _) in stg.SPURIOUS_MECHANISM.items():
        assert {v[name] for v in vals} == train_support[name]
        assert abs(correlation([v[name] for v in vals], [v[cause] for v in vals])) < 0.08


def test_label_rule(splits):
    for records in splits.values():
        for rec in records:
            v = values(rec)
            score = 1.2 * v["Smoking"] + 0.7 * v["Weight"] - v["Exercise"]
            assert rec["target"] == ("High Risk" if score > 7.2 else "Low Risk")


@pytest.mark.parametrize(("causes", "label"), [
    ((8, 4, 2), "High Risk"),   # 9.6 + 2.8 - 2 = 10.4
    ((1, 1, 1), "Low Risk"),
    ((10, 10, 10), "High Risk"),  # 12 + 7 - 10 = 9
    ((1, 10, 1), "Low Risk"),   # exactly 7.2 in reals, 7.199999999999999 as a float: not above
    ((1, 5, 2), "Low Risk"),    # 2.7: the Middle Risk branch is off by default
])
def test_label_examples(causes, label):
    assert stg.risk_label(*causes) == label


def test_middle_risk_branch_fires_only_on_float_equality():
    firing = {(s, w, e) for s in range(1, 11) for w in range(1, 11) for e in range(1, 11)
              if stg.risk_label(s, w, e, middle_risk=True) == "Middle Risk"}
    # Eight integer triples give 2.7 in exact arithmetic; the float sum hits 2.7 for two of them,
    # the two the released files label Middle Risk.
    assert firing == {(1, 5, 2), (5, 1, 4)}
    assert stg.risk_label(3, 3, 3, middle_risk=True) == "Low Risk"  # 2.7 in reals only


def test_middle_risk_option_in_generated_data():
    on = stg.generate_splits(3, 6000, 0, middle_risk=True, extra_shifts=())["train"]
    off = stg.generate_splits(3, 6000, 0, extra_shifts=())["train"]
    middle = [r for r in on if r["target"] == "Middle Risk"]
    assert middle, "about 12 of 6000 expected"
    for rec in middle:
        v = values(rec)
        assert (v["Smoking"], v["Weight"], v["Exercise"]) in {(1, 5, 2), (5, 1, 4)}
    assert not any(r["target"] == "Middle Risk" for r in off)
    # Same stream, only the labels of those items differ.
    assert [r["input"] for r in on] == [r["input"] for r in off]


def test_annotation_and_noncausal_spans(splits):
    for records in splits.values():
        for rec in records[:500]:
            fields = parse_table(rec["input"])
            causes = [f.span for f in fields if f.name in stg.CAUSES]
            assert rec["important"] == [{rec["target"]: causes}]
            assert rec["noncausal"] == {
                "spurious": [f.span for f in fields if f.name in stg.SPURIOUS],
                "irrelevant": [f.span for f in fields if f.name in stg.IRRELEVANT],
            }
            for span in causes + rec["noncausal"]["spurious"] + rec["noncausal"]["irrelevant"]:
                assert span in rec["input"]


def test_seeded_and_independent_of_other_splits():
    a = stg.generate_splits(11, 50, 20)
    b = stg.generate_splits(11, 50, 20, extra_shifts=())
    c = stg.generate_splits(12, 50, 20)
    assert a["train"] == b["train"] and a["test_ood"] == b["test_ood"]
    assert a["train"] != c["train"]
    assert stg.generate_splits(11, 50, 20) == a
    # Another test size leaves the training pool as it was.
    assert stg.generate_splits(11, 50, 5)["train"] == a["train"]


def test_bad_options():
    with pytest.raises(ValueError, match="unknown shift"):
        stg.generate_splits(0, 1, 1, extra_shifts=("flipped",))
    with pytest.raises(ValueError, match="non-negative"):
        stg.generate_splits(0, -1, 1)


def test_redraw_spurious_changes_only_spurious_values(splits):
    rng = random.Random(0)
    for rec in splits["test_ood"][:2000]:
        new = stg.redraw_spurious(rec["input"], rng)
        before, after = values(rec), {f.name: int(f.value) for f in parse_table(new)}
        assert [f.name for f in parse_table(new)] == [f.name for f in parse_table(rec["input"])]
        assert any(before[n] != after[n] for n in stg.SPURIOUS)
        assert all(before[n] == after[n] for n in stg.CAUSES + stg.IRRELEVANT)
        assert all(1 <= after[n] <= 10 for n in stg.SPURIOUS)
        assert new.startswith(stg.PROMPT_PREFIX) and new.endswith(stg.PROMPT_SUFFIX)


def test_redraw_spurious_changes_a_value_even_when_the_draw_repeats():
    # A prompt whose spurious values are all 1: a redraw must not return it unchanged, even
    # though (1, 1, 1) is one of the 1000 possible draws.
    text = stg.format_prompt(dict.fromkeys(stg.VARIABLES, 1), stg.VARIABLES)
    rng = random.Random(5)
    assert all(stg.redraw_spurious(text, rng) != text for _ in range(3000))


def test_redraw_spurious_same_length_keeps_every_printed_length(splits):
    rng = random.Random(2)
    drawn = set()
    for rec in splits["test_ood"][:2000]:
        new = stg.redraw_spurious_same_length(rec["input"], rng)
        before, after = values(rec), {f.name: int(f.value) for f in parse_table(new)}
        assert len(new) == len(rec["input"])
        assert all(len(str(before[n])) == len(str(after[n])) for n in stg.SPURIOUS)
        assert all(before[n] == after[n] for n in stg.CAUSES + stg.IRRELEVANT)
        if any(before[n] != 10 for n in stg.SPURIOUS):
            assert any(before[n] != after[n] for n in stg.SPURIOUS)
        drawn |= {after[n] for n in stg.SPURIOUS if before[n] != after[n]}
    assert drawn == set(range(1, 10))  # every one-digit value is drawn; 10 has no same-length alternative


def test_redraw_spurious_same_length_leaves_a_prompt_it_cannot_change():
    text = stg.format_prompt({**dict.fromkeys(stg.VARIABLES, 3), **dict.fromkeys(stg.SPURIOUS, 10)}, stg.VARIABLES)
    assert stg.redraw_spurious_same_length(text, random.Random(0)) == text
    one_digit = text.replace("Hormones: 10", "Hormones: 4")
    assert all(stg.redraw_spurious_same_length(one_digit, random.Random(seed)) != one_digit for seed in range(200))


@pytest.mark.slow
def test_redraw_spurious_same_length_keeps_smollm2_token_positions(splits):
    from cattune.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    rng = random.Random(3)
    for rec in splits["test_ood"][:300]:
        old = tok(rec["input"])["input_ids"]
        new = tok(stg.redraw_spurious_same_length(rec["input"], rng))["input_ids"]
        assert len(new) == len(old)
        assert sum(a != b for a, b in zip(old, new)) <= len(stg.SPURIOUS)  # one digit token per changed value


def test_redraw_noncausal_keeps_causes_and_label(splits):
    rng = random.Random(1)
    changed = dict.fromkeys(stg.SPURIOUS + stg.IRRELEVANT, 0)
    for rec in splits["train"][:1000]:
        new = stg.redraw_noncausal(rec["input"], rng)
        before, after = values(rec), {f.name: int(f.value) for f in parse_table(new)}
        assert all(before[n] == after[n] for n in stg.CAUSES)
        assert stg.risk_label(after["Smoking"], after["Weight"], after["Exercise"]) == rec["target"]
        for n in changed:
            assert 1 <= after[n] <= 10
            changed[n] += before[n] != after[n]
    assert all(count > 800 for count in changed.values()), changed


def test_spans_on_a_plain_prompt():
    order = ("Hormones", "Smoking", "Room size", "Exercise", "Yellow fingers", "Weight", "Certain gene", "Clothing size")
    text = stg.format_prompt({"Smoking": 8, "Weight": 4, "Exercise": 2, "Yellow fingers": 12,
                              "Clothing size": 4, "Hormones": 1, "Certain gene": 5, "Room size": 6}, order)
    relations, noncausal = stg.spans(text, "High Risk")
    assert relations == (Relation("High Risk", ("Smoking: 8", "Exercise: 2", "Weight: 4")),)
    assert noncausal == {"spurious": ["Hormones: 1", "Yellow fingers: 12", "Clothing size: 4"],
                         "irrelevant": ["Room size: 6", "Certain gene: 5"]}


def test_spans_rejects_other_prompts():
    with pytest.raises(ValueError, match="not an STG prompt"):
        stg.spans("Ruth has 5 apples. How many? Answer: ", "5")


def test_every_permutation_of_causes_keeps_prompt_order():
    base = {n: i + 1 for i, n in enumerate(stg.VARIABLES)}
    for order in permutations(stg.CAUSES):
        full = list(order) + list(stg.SPURIOUS + stg.IRRELEVANT)
        relations, _ = stg.spans(stg.format_prompt(base, full), "Low Risk")
        assert relations[0].causes == tuple(f"{n}: {base[n]}" for n in order)


# --- the released files ---------------------------------------------------------------------------

def load_release(release_dir, name):
    with open(release_dir / "STG" / name, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_release_labels_follow_the_rule_with_middle_risk(release_dir):
    for name in ("spurious_token_game_train3.jsonl", "spurious_token_game_test3.jsonl", "spurious_token_game_ood3_2.jsonl"):
        records = load_release(release_dir, name)
        for rec in records:
            v = values(rec)
            assert rec["target"] == stg.risk_label(v["Smoking"], v["Weight"], v["Exercise"], middle_risk=True)
    middle = sum(r["target"] == "Middle Risk" for name in ("spurious_token_game_train3.jsonl", "spurious_token_game_test3.jsonl")
                 for r in load_release(release_dir, name))
    assert middle == 7


def test_release_spurious_rule_and_ood_independence(release_dir):
    for name in ("spurious_token_game_train3.jsonl", "spurious_token_game_test3.jsonl"):
        for rec in load_release(release_dir, name):
            v = values(rec)
            for spurious, (cause, ratio) in stg.SPURIOUS_MECHANISM.items():
                assert v[spurious] == int(ratio * v[cause])
    ood = [values(r) for r in load_release(release_dir, "spurious_token_game_ood3_2.jsonl")]
    for spurious, (cause, _) in stg.SPURIOUS_MECHANISM.items():
        assert {v[spurious] for v in ood} == set(range(1, 11))
        assert abs(correlation([v[spurious] for v in ood], [v[cause] for v in ood])) < 0.15


def test_release_majority_baselines(release_dir):
    for name, expected in (("spurious_token_game_test3.jsonl", 68.8), ("spurious_token_game_ood3_2.jsonl", 66.5)):
        targets = [r["target"] for r in load_release(release_dir, name)]
        assert round(100 * targets.count("Low Risk") / len(targets), 1) == expected


def test_spans_reproduce_released_annotations(release_dir):
    for name in ("spurious_token_game_train3.jsonl", "spurious_token_game_train3_M.jsonl", "spurious_token_game_train3_S.jsonl"):
        for rec in load_release(release_dir, name):
            relations, _ = stg.spans(rec["input"], rec["target"])
            assert [{r.effect: list(r.causes)} for r in relations] == rec["important"]


def test_spans_on_unannotated_released_tests(release_dir):
    for name in ("spurious_token_game_test3.jsonl", "spurious_token_game_ood3_2.jsonl"):
        for rec in load_release(release_dir, name):
            relations, noncausal = stg.spans(rec["input"], rec["target"])
            assert len(relations[0].causes) == 3 and len(noncausal["spurious"]) == 3 and len(noncausal["irrelevant"]) == 2


def test_generated_prompts_have_the_released_form(release_dir):
    released = load_release(release_dir, "spurious_token_game_train3.jsonl")[0]
    generated = stg.generate_splits(0, 1, 0, extra_shifts=())["train"][0]
    strip = lambda text: [f.name for f in parse_table(text)]  # noqa: E731
    assert sorted(strip(released["input"])) == sorted(strip(generated["input"]))
    skeleton = lambda rec: rec["input"].split(parse_table(rec["input"])[0].name)[0]  # noqa: E731
    assert skeleton(released) == skeleton(generated)
    assert set(released) <= set(generated)


def test_label_by_spurious_length_counts_two_digit_spurious_values():
    def prompt(**spurious):
        values = {**dict.fromkeys(stg.VARIABLES, 3), **{k.replace("_", " ").capitalize(): v for k, v in spurious.items()}}
        return stg.format_prompt(values, stg.VARIABLES)

    items = [(prompt(), "Low Risk"), (prompt(yellow_fingers=12), "High Risk"), (prompt(clothing_size=10), "Low Risk"),
             (prompt(yellow_fingers=15, clothing_size=10), "High Risk")]
    # The causes' own two-digit values do not count.
    items.append((stg.format_prompt({**dict.fromkeys(stg.VARIABLES, 3), "Smoking": 10}, stg.VARIABLES), "Low Risk"))
    table = stg.label_by_spurious_length(items)
    assert {k: g["n"] for k, g in table.items()} == {0: 2, 1: 2, 2: 1}
    assert table[1]["shares"] == {"High Risk": 0.5, "Low Risk": 0.5} and table[2]["labels"] == {"High Risk": 1}
