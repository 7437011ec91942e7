import json
import random

import pytest

import cattune.flip as flip_module
from cattune.checkers import get_checker
from cattune.data.records import DataError, Record
from cattune.data.tables import parse_table, replace_values
from cattune.evaluate import generate
from cattune.flip import answers_differ, flip_rate, perturb_records
from cattune.stats import wilson_interval
from tiny_models import tiny_llama, tiny_tokenizer

CAUSES = ("Smoking", "Weight", "Exercise")
SPURIOUS = ("Yellow fingers", "Clothing size", "Hormones")


def stg_records(n: int, seed: int = 0) -> list[Record]:
    """Hand-made STG-style items: spurious values follow the causes, as in training data."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        s, w, e = rng.randint(1, 10), rng.randint(1, 10), rng.randint(1, 10)
        values = {"Smoking": s, "Weight": w, "Exercise": e, "Yellow fingers": int(1.5 * s),
                  "Clothing size": w, "Hormones": int(0.5 * e)}
        pairs = ", ".join(f"{k}: {v}" for k, v in values.items())
        label = "High Risk" if 1.2 * s + 0.7 * w - e > 7.2 else "Low Risk"
        records.append(Record(input=f"Data for a person. {pairs} Answer: ", target=label, raw_target=label,
                              source="hand.jsonl", line=i + 1))
    return records


def redraw(text: str, rng: random.Random) -> str:
    """The test's own perturbation: new spurious values, causes untouched."""
    return replace_values(text, {name: str(rng.randint(11, 20)) for name in SPURIOUS})


def _values(prompt: str) -> dict[str, int]:
    return {f.name: int(f.value) for f in parse_table(prompt)}


def cause_reader(prompt: str) -> str:
    v = _values(prompt)
    return " High Risk" if 1.2 * v["Smoking"] + 0.7 * v["Weight"] - v["Exercise"] > 7.2 else " Low Risk"


def spurious_reader(prompt: str) -> str:
    v = _values(prompt)
    return " High Risk" if v["Yellow fingers"] / 1.5 + 0.7 * v["Clothing size"] - 2 * v["Hormones"] > 7.2 else " Low Risk"


def _fake_generate(reader):
    def fake(model, tokenizer, prompts, **kwargs):
        return [reader(p) for p in prompts]
    return fake


def test_a_model_that_reads_only_the_causes_never_flips(monkeypatch):
    records = stg_records(40)
    monkeypatch.setattr(flip_module, "generate", _fake_generate(cause_reader))
    result = flip_rate(None, None, records, redraw, task="stg")
    assert (result.n, result.flips, result.rate) == (40, 0, 0.0)
    assert (result.ci_low, result.ci_high) == wilson_interval(0, 40)
    assert result.unchanged_prompts == 0


def test_a_model_that_reads_the_spurious_values_flips_where_its_answer_changes(monkeypatch, tmp_path):
    records = stg_records(40)
    perturbed = perturb_records(records, redraw, seed=4)
    expected = sum(spurious_reader(r.input) != spurious_reader(p) for r, p in zip(records, perturbed))
    assert 0 < expected < 40
    monkeypatch.setattr(flip_module, "generate", _fake_generate(spurious_reader))
    result = flip_rate(None, None, records, redraw, task="stg", seed=4, per_item_path=tmp_path / "flips.jsonl")
    assert result.flips == expected and result.rate == expected / 40
    item = result.per_item[0]
    assert item["original_prompt"] == records[0].input and item["perturbed_prompt"] == perturbed[0]
    assert item["original_answer"] == spurious_reader(records[0].input).strip()
    assert item["flipped"] == (item["original_answer"] != item["perturbed_answer"])
    # The causes were kept; only the spurious values changed.
    original, new = _values(item["original_prompt"]), _values(item["perturbed_prompt"])
    assert all(original[c] == new[c] for c in CAUSES) and any(original[s] != new[s] for s in SPURIOUS)
    lines = [json.loads(x) for x in (tmp_path / "flips.jsonl").read_text().splitlines()]
    assert sum(line["flipped"] for line in lines) == expected
    assert result.to_json()["per_item"] == str(tmp_path / "flips.jsonl")


def test_perturbations_are_seeded():
    records = stg_records(5)
    assert perturb_records(records, redraw, seed=1) == perturb_records(records, redraw, seed=1)
    assert perturb_records(records, redraw, seed=1) != perturb_records(records, redraw, seed=2)


def test_identity_perturbation_is_reported_as_unchanged(monkeypatch):
    monkeypatch.setattr(flip_module, "generate", _fake_generate(spurious_reader))
    result = flip_rate(None, None, stg_records(6), lambda text, rng: text, task="stg")
    assert result.unchanged_prompts == 6 and result.flips == 0


def test_a_prompt_the_perturbation_cannot_handle_names_its_line():
    def strict(text: str, rng: random.Random) -> str:
        raise ValueError("no spurious fields")

    with pytest.raises(DataError, match=r"hand.jsonl:1: cannot perturb"):
        perturb_records(stg_records(2), strict)


def test_answers_differ_uses_the_task_rule():
    numeric, stg = get_checker("numeric"), get_checker("stg")
    assert not answers_differ(numeric, "84", "84.0")
    assert answers_differ(numeric, "84", "85")
    assert answers_differ(stg, "High Risk", "Low Risk")
    assert answers_differ(stg, "High Risk", "")
    assert not answers_differ(stg, "", "")


def test_reusing_the_evaluation_generations_gives_the_same_result():
    model, tok = tiny_llama(initializer_range=0.2), tiny_tokenizer()
    records = stg_records(8, seed=1)
    checker = get_checker("stg")
    originals = generate(model, tok, [r.input for r in records], max_new_tokens=checker.max_new_tokens,
                         stop_strings=checker.stop_strings, progress=False)
    fresh = flip_rate(model, tok, records, redraw, task="stg", seed=3, batch_size=3, progress=False)
    reused = flip_rate(model, tok, records, redraw, task="stg", seed=3, original_generations=originals, progress=False)
    assert fresh.per_item == reused.per_item
    assert [item["original_generation"] for item in fresh.per_item] == originals
    with pytest.raises(ValueError, match="original_generations"):
        flip_rate(model, tok, records, redraw, task="stg", original_generations=originals[:2])


def test_flips_by_token_change_groups_items_by_the_change_in_prompt_length():
    from cattune.flip import flips_by_token_change
    from word_tokenizer import word_tokenizer

    def item(before, after, flipped, a="Low Risk", b="High Risk"):
        return {"original_prompt": before, "perturbed_prompt": after, "flipped": flipped,
                "original_answer": a, "perturbed_answer": b if flipped else a}

    # The word tokenizer makes one token per word: "Smoking : 10" and "Smoking : 9" have the same count,
    # so here a token is added by adding a word.
    items = [item("Smoking : 9", "Smoking : 10", False), item("Smoking : 9", "Smoking : 9 Risk", True),
             item("Smoking : 9", "Smoking : 8 Risk", True), item("Smoking : 9 Risk", "Smoking : 9", True, "High Risk", "Low Risk"),
             item("Smoking : 9 Risk", "Smoking : 9", False)]
    table = flips_by_token_change(items, word_tokenizer())
    assert list(table) == ["-1", "0", "+1"]
    assert table["0"] == {"n": 1, "flips": 0, "changes": {}, "rate": 0.0}
    assert table["+1"] == {"n": 2, "flips": 2, "changes": {"Low Risk -> High Risk": 2}, "rate": 1.0}
    assert table["-1"]["changes"] == {"High Risk -> Low Risk": 1} and table["-1"]["rate"] == 0.5
    assert flips_by_token_change([], word_tokenizer()) == {}
