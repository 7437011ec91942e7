"""The coverage report: exact figures on a hand-made file, and the released STG, STG_H and MAWPS
training files with the SmolLM2 tokenizer (no STG or STG_H span may be missed)."""

from __future__ import annotations

import json

import pytest
from word_tokenizer import word_tokenizer

from cattune.coverage import coverage_report
from cattune.data.records import load_records

LINES = [
    # 1: fully covered -> 2 rows ("High Risk" is two tokens).
    {"input": "Smoking: 8, Weight: 4 Answer: ", "target": "High Risk",
     "important": [{"High Risk": ["Smoking: 8", "Weight: 4"]}]},
    # 2: one cause and one effect missing; the found relation still gives 1 row.
    {"input": "Tom has 3 apples. How many? Answer: ", "target": "3",
     "important": [{"3": ["Tom has 3 apples", "4 pears"]}, {"Answer: 5": ["Tom"]}]},
    # 3: no annotation at all (a test line).
    {"input": "Smoking: 1 Answer: ", "target": "Low Risk"},
    # 4: annotated but empty, and a repair the loader made.
    {"input": "How many? Answer: ", "target": "2", "important": [{}]},
    # 5: the cause only comes after the effect.
    {"input": "Answer: Low then Exercise: 2", "target": "", "important": [{"Low": ["Exercise: 2"]}]},
]


@pytest.fixture
def small_file(tmp_path):
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps(obj) + "\n" for obj in LINES))
    return path


def test_figures_of_a_hand_made_file(small_file):
    report = coverage_report(small_file, word_tokenizer(), worst=10)
    assert report["file"] == str(small_file)
    assert (report["records"], report["annotated_records"], report["empty_annotations"]) == (5, 4, 1)
    assert report["relations"] == 4
    assert (report["effect_spans_found"], report["effect_spans_missing"]) == (3, 1)
    # Found causes: 2 on line 1, "Tom has 3 apples" and "Tom" on line 2, "Exercise: 2" on line 5.
    assert (report["cause_spans_found"], report["cause_spans_missing"]) == (5, 1)
    # Rows per annotated record: 2, 1, 0, 0.
    assert report["rows_per_record"] == {"mean": 0.75, "min": 0, "max": 2}
    assert report["supervised_rows"] == 3 and report["zero_row_records"] == 2
    # Line 5, and line 2 where the effect "3" also occurs inside its own cause "Tom has 3 apples".
    assert report["pairs_skipped_order"] == 2
    assert report["annotation_repairs"] == {"empty_relation": 1}
    assert (report["truncated_records"], report["rows_truncated"]) == (0, 0)
    worst = report["worst"]
    # Missing spans first, then records without rows in file order.
    assert [w["where"] for w in worst] == [f"{small_file}:2", f"{small_file}:4", f"{small_file}:5"]
    assert worst[0]["missing_effects"] == ["Answer: 5"] and worst[0]["missing_causes"] == ["4 pears"]
    assert worst[1]["problem"] == "no usable relation"
    assert "1 with the cause not before the effect" in worst[2]["problem"]
    assert report["records_with_problems"] == 3
    assert len(coverage_report(small_file, word_tokenizer(), worst=1)["worst"]) == 1


def test_truncation_is_reported(small_file):
    report = coverage_report(small_file, word_tokenizer(), max_length=8)
    # Line 1 is 12 tokens with eos, its rows 8 and 9 are cut; line 2 is 12 tokens, its row 9
    # (predicting the target "3", token 10) is cut.
    assert report["truncated_records"] == 2
    assert report["rows_truncated"] == 3
    assert report["supervised_rows"] == 0
    assert report["tokens_per_record"]["max"] == 12  # the full length, not the truncated one
    assert any("truncation dropped" in w["problem"] for w in report["worst"])


def test_records_instead_of_a_path(small_file):
    records = load_records(small_file)
    assert coverage_report(records, word_tokenizer()) == coverage_report(small_file, word_tokenizer())


@pytest.mark.slow
def test_released_training_files_with_smollm2(release_dir):
    from cattune.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    stg = coverage_report(release_dir / "STG/spurious_token_game_train3.jsonl", tok)
    assert (stg["records"], stg["annotated_records"], stg["relations"]) == (1600, 1600, 1600)
    assert (stg["effect_spans_missing"], stg["cause_spans_missing"], stg["zero_row_records"]) == (0, 0, 0)
    assert stg["rows_per_record"] == {"mean": 2.0, "min": 2, "max": 2}  # "High"/"Low" and " Risk"
    stg_h = coverage_report(release_dir / "STG_H/STG_H_train.jsonl", tok)
    assert (stg_h["effect_spans_missing"], stg_h["cause_spans_missing"], stg_h["zero_row_records"]) == (0, 0, 0)
    assert stg_h["cause_spans_found"] == 6 * 3000
    mawps = coverage_report(release_dir / "MAWPS/mawps_train.jsonl", tok)
    assert mawps["records"] == 1239
    # Assistant-written spans: some are paraphrases that never occur in the text; they are counted.
    assert mawps["cause_spans_missing"] > 0 and mawps["worst"]
    assert mawps["effect_spans_found"] + mawps["effect_spans_missing"] == mawps["relations"]
