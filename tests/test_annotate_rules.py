"""Rule-based annotation of "Name: value" prompts, against the released STG and STG_H files."""

import json

import pytest

from cattune.annotate import RuleAnnotator, annotate_records
from cattune.cli.main import main
from cattune.data.records import load_records, parse_record
from cattune.data.tables import parse_table

STG_PROMPT = ("Here is the statistical data for a person. Please predict the probability of cancer. Hormones: 1, "
              "Exercise: 2, Yellow fingers: 12, Smoking: 8, Room size: 6, Weight: 10, Clothing size: 10 Answer: ")


def test_causes_follow_the_order_of_the_prompt():
    record = parse_record({"input": STG_PROMPT, "target": "High Risk"})
    outcome = RuleAnnotator(["Smoking", "Weight", "Exercise"]).annotate(record)
    assert outcome.status == "annotated"
    assert [(r.effect, r.causes) for r in outcome.relations] == [("High Risk", ("Exercise: 2", "Smoking: 8", "Weight: 10"))]
    assert outcome.spans_kept == 4


def test_value_form_with_an_answer_effect():
    record = parse_record({"input": "Industrial Emissions: 47.9; Coal Dependency: 41.9%; Noise: 47.9. AQI? Answer: ", "target": 32})
    outcome = RuleAnnotator(["Industrial Emissions", "Coal Dependency"], effect_form="Answer: {target}",
                            cause_form="value").annotate(record)
    assert [(r.effect, r.causes) for r in outcome.relations] == [("Answer: 32", ("47.9", "41.9%"))]


def test_missing_field_fails_the_item_with_its_name():
    record = parse_record({"input": "Smoking: 3, Exercise: 1 Answer: ", "target": "Low Risk"})
    outcome = RuleAnnotator(["Smoking", "Weight"]).annotate(record)
    assert outcome.status == "failed" and outcome.failure_kind == "rules"
    assert outcome.reason == "no field named 'Weight' in the input (fields: Smoking, Exercise)"


def test_effect_not_in_text_fails_the_item():
    record = parse_record({"input": "Smoking: 3 Answer: ", "target": "Low Risk"})
    outcome = RuleAnnotator(["Smoking"], effect_form="Risk: {target}").annotate(record)
    assert outcome.status == "failed" and "effect 'Risk: Low Risk': not_in_text" in outcome.reason


@pytest.mark.parametrize("kwargs", [dict(causes=[]), dict(causes=["A"], cause_form="name"), dict(causes=["A"], effect_form="Answer")])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        RuleAnnotator(**kwargs)


def test_cli_contract_reproduces_the_released_stg_training_file(release_dir, tmp_path, capsys):
    released = release_dir / "STG" / "spurious_token_game_train3.jsonl"
    out = tmp_path / "stg.jsonl"
    code = main(["annotate", "--backend", "rules", "--causes", "Smoking,Weight,Exercise", "--in", str(released),
                 "--out", str(out), "--no-progress"])
    assert code == 0
    assert "items 1600: annotated 1600, failed 0" in capsys.readouterr().out
    # Every record, byte for byte: same cause order, same fields, same JSON layout.
    assert out.read_bytes() == released.read_bytes()
    assert not (tmp_path / "stg.annotate-cache.jsonl").exists()  # rules need no cache


def test_stg_h_value_form_reproduces_the_released_annotations(release_dir):
    records = load_records(release_dir / "STG_H" / "STG_H_train.jsonl")
    causes = [f.name for f in parse_table(records[0].input)][:6]
    assert causes == ["Industrial Emissions", "Vehicle Emissions", "Coal Dependency", "Agricultural Burning",
                      "Urban Green Coverage", "Meteorological Dispersion"]
    run = annotate_records(records, RuleAnnotator(causes, effect_form="Answer: {target}", cause_form="value"), progress=False)
    released = [json.loads(line) for line in (release_dir / "STG_H" / "STG_H_train.jsonl").read_text().splitlines()]
    produced = [r.to_json() for r in run.output_records()]
    assert len(produced) == len(released) == 3000
    matching = sum(a == b for a, b in zip(produced, released))
    assert matching == 3000  # including the 21 items where two causes print the same value
