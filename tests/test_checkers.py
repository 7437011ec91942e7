import pytest

from cattune.checkers import TASKS, get_checker, infer_task, numbers_match
from cattune.data.records import DataError, Record, load_records


@pytest.mark.parametrize(
    "task, generation, target, answer, correct",
    [
        ("stg", " High Risk\nHere is", "High Risk", "High Risk", True),
        ("stg", "Low Risk", "High Risk", "Low Risk", False),
        ("stg", "High Risk.", "High Risk", "High Risk.", False),  # exact match after strip
        ("stg", "1.", "Low Risk", "1.", False),
        ("stg", "\nHigh Risk", "High Risk", "", False),  # an empty first line is no answer
        ("stg_h", "62\n", "62", "62", True),
        ("stg_h", "62.0", "62", "62.0", False),  # STG_H: exact match on the printed integer
        ("mawps", "Answer: 84.0", "Answer: 84.0", "84.0", True),
        ("mawps", "84", "Answer: 84.0", "84", True),  # "84" vs "84.0" compared as numbers
        ("mawps", "84.0", "84", "84.0", True),
        ("mawps", " 84.0 apples\n12", "84.0", "84.0", True),
        ("mawps", "85.0", "84.0", "85.0", False),
        ("mawps", "10.67", "10.6666666667", "10.67", True),  # target rounded to the given decimals
        ("mawps", "10.7", "10.6666666667", "10.7", False),  # fewer than 2 decimals: no rounding credit
        ("mawps", "11", "10.6666666667", "11", False),
        ("mawps", "apples", "84.0", "", False),
        ("svamp", "The answer is 1,000.", "1000.0", "1000", True),
        ("svamp", "-3", "-3.0", "-3", True),
        ("numeric", "5-3=2", "5.0", "5", True),  # the first number, not "-3"
        ("asdiv", "6 (bags)", "6 (bags)", "6", True),
        ("asdiv", "6 bags", "6 (bags)", "6 bags", True),
        ("asdiv", "7 (bags)", "6 (bags)", "7", False),
        ("asdiv", "3.333", "3.333 (minutes)", "3.333", True),
        ("asdiv", "2 : 13", "2:13", "2 : 13", True),
        ("asdiv", "2:31", "2:13", "2:31", False),
        ("asdiv", "5/2", "5/2", "5/2", True),
        ("asdiv", "2.5", "5/2", "2.5", True),
        ("asdiv", "10/4", "5/2", "10/4", True),
        ("asdiv", "Clara.", "Clara", "Clara.", True),
        ("asdiv", "they are equal", "They are equal", "they are equal", True),
        ("asdiv", "3:30 p.m.", "3:30 p.m.", "3:30 p.m.", True),
        ("gsm8k", "She sells 16 - 3 = 13.\n#### 1,000\nQuestion", "1000", "1000", True),
        ("gsm8k", "#### 1,000", "1,000", "1000", True),
        ("gsm8k", "#### $18.00", "18", "18.00", True),
        ("gsm8k", "$18", "18", "18", True),  # bare-answer format
        ("gsm8k", "She sells 18 eggs", "18", "", False),  # no "####" and no leading number
        ("gsm8k", "#### -10", "-10", "-10", True),
        ("gsm8k", "18", "16 - 3 - 4 = 9 eggs.\n#### 18", "18", True),  # worked-solution target
        ("arc_e", "Answer: B.", "B", "B", True),
        ("arc_e", " B", "B", "B", True),
        ("arc_e", "(C) water", "C", "C", True),
        ("arc_e", "C. water", "B", "C", False),
        ("arc_e", "2", "2", "2", True),
        ("arc_e", "The answer is D", "D", "D", True),
        ("arc_e", "water", "C", "", False),
    ],
)
def test_checker_on_hand_made_predictions(task, generation, target, answer, correct):
    checker = get_checker(task)
    assert checker.extract(generation) == answer
    assert checker.is_correct(generation, target) is correct


def test_numbers_match_tolerance():
    assert numbers_match("84", "84.0000001")
    assert not numbers_match("84", "84.01")
    assert numbers_match("0.33", "0.3333333333")
    assert not numbers_match("0.3", "0.3333333333")
    assert not numbers_match("", "1")


def test_every_task_has_a_checker_with_a_stop_condition():
    for task in TASKS:
        checker = get_checker(task)
        assert checker.max_new_tokens >= 1
        assert checker.stop_strings or checker.stop_pattern
    with pytest.raises(ValueError, match="unknown task"):
        get_checker("nope")


def _records(targets, prompt="Q? Answer: ", **extra):
    return [Record(input=prompt, target=str(t), raw_target=t, extra=dict(extra), source="hand.jsonl", line=i + 1)
            for i, t in enumerate(targets)]


def test_infer_task_from_hand_made_records():
    assert infer_task(_records(["High Risk", "Low Risk"])) == "stg"
    assert infer_task(_records([62, 31], prompt="Air Quality Index (AQI) on a 0-100 scale? Answer: ")) == "stg_h"
    assert infer_task(_records(["A", "C"], prompt="Which?\nA. x\nB. y\nC. z\nAnswer: ")) == "arc_e"
    assert infer_task(_records(["18"], answer="3 + 15 = 18\n#### 18")) == "gsm8k"
    assert infer_task(_records(["6 (bags)", "13"])) == "asdiv"
    assert infer_task(_records(["Answer: 84.0", "Answer: 5.0"])) == "numeric"
    assert infer_task(_records(["84.0", "1,000"])) == "numeric"
    with pytest.raises(DataError, match="hand.jsonl: cannot tell which task"):
        infer_task(_records(["Paris", "Rome"]))


RELEASED_TASKS = {
    "STG/spurious_token_game_ood3_2.jsonl": "stg",
    "STG_H/STG_H_ood_test.jsonl": "stg_h",
    "MAWPS/mawps_test.jsonl": "numeric",
    "MAWPS/mawps_ood.jsonl": "numeric",
    "SVAMP/svamp_test.jsonl": "numeric",
    "GSM8k/gsm8k_test.jsonl": "gsm8k",
    "GSM8k/gsm8k_val.jsonl": "gsm8k",
    "ARC_E/ARC_E_test.jsonl": "arc_e",
    "ASDiv/merged_asdiv.jsonl": "asdiv",
}


@pytest.mark.shared_data
@pytest.mark.parametrize("relative, task", sorted(RELEASED_TASKS.items()))
def test_released_files_infer_and_accept_their_own_targets(release_dir, relative, task):
    records = load_records(release_dir / relative)
    assert infer_task(records) == task
    checker = get_checker(task)
    # A model that prints the target verbatim must score 100% on every released file.
    rejected = [r.target for r in records if not checker.is_correct(r.target, r.target)]
    assert rejected == []


@pytest.mark.parametrize(
    ("task", "answer", "target", "error"),
    [
        ("stg_h", "60", "62", 2.0),
        ("stg_h", "62.0", "62", 0.0),  # wrong by exact match, no error as a number
        ("stg_h", "High", "62", None),
        ("mawps", "80", "Answer: 84.0", 4.0),
        ("svamp", "-3", "4", 7.0),
        ("gsm8k", "70", "She pays 9 * 8 = 72\n#### 72", 2.0),
        ("numeric", "", "5", None),
        ("stg", "High Risk", "Low Risk", None),  # not a numeric task
        ("arc_e", "1", "2", None),
    ],
)
def test_absolute_error_of_numeric_answers(task, answer, target, error):
    checker = get_checker(task)
    assert checker.numeric == (task not in {"stg", "arc_e"})
    assert checker.absolute_error(answer, target) == error


def test_target_number_reads_each_numeric_format():
    assert get_checker("mawps").target_number("Answer: 84.0") == "84.0"
    assert get_checker("gsm8k").target_number("3 + 4 = 7\n#### 1,200") == "1200"
    assert get_checker("stg_h").target_number(" 62 ") == "62"
    assert get_checker("stg").target_number("High Risk") == ""
