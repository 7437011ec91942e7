"""Downstream tasks: preparation from the released files, deduplication, prompt normalisation,
checkers on the prepared tests, the ``cattune data task`` command and the downstream configs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cattune import evaluate as evaluate_module
from cattune.checkers import TASKS as CHECKERS
from cattune.cli.main import main
from cattune.config import load_config
from cattune.data.records import DataError, load_records
from cattune.evaluate import evaluate_records
from cattune.experiment_config import ExperimentConfig
from cattune.masks import find_occurrences
from cattune.tasks import CARD_JSON, ORIGIN_FIELD, TASKS, get_task, prepare_task, question_key

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "downstream"
DOWNSTREAM_CONFIGS = sorted(CONFIGS.rglob("*.yaml"))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _svamp(body: str, question: str, answer: str, important: list | None = None) -> dict:
    row = {"Body": body, "Question": question, "input": f"{body}. {question}. Answer: ", "target": answer}
    if important is not None:
        row["important"] = important
    return row


@pytest.fixture
def tiny_release(tmp_path: Path) -> Path:
    """The four files the mawps task reads, with hand-made repeats and overlaps."""
    root = tmp_path / "release"
    _write_jsonl(root / "MAWPS/mawps_train.jsonl", [
        {"input": "Tim 's cat had 3 kittens . How many kittens ?", "target": "Answer: 3.0",
         "important": [{"3.0": ["3 kittens"]}, {"Answer": ["How many kittens"]}]},
        {"input": "Ann has 5 pens. She buys 2. How many pens does Ann have?", "target": "Answer: 7.0", "important": []},
    ])
    _write_jsonl(root / "MAWPS/mawps_test.jsonl", [
        {"input": "Tim's cat had 3 kittens. How many kittens?", "target": "Answer: 3.0"},  # in train, spaced differently
        {"input": "Bo has 4 hats. He loses 1. How many hats are left?", "target": "Answer: 3.0"},
        {"input": "Bo has 4 hats . He loses 1 . How many hats are left ?", "target": "Answer: 3.0"},  # repeat
        {"input": "Cy has 9 cups. He breaks 2. How many cups are left?", "target": "Answer: 7.0"},
    ])
    _write_jsonl(root / "MAWPS/mawps_val.jsonl", [
        {"input": "Di has 6 eggs. She eats 1. How many eggs are left?", "target": "Answer: 5.0"},
    ])
    _write_jsonl(root / "SVAMP/svamp_ood.jsonl", [
        _svamp("Ann has 5 pens. She buys 2", "How many pens does Ann have?", "7.0"),  # a MAWPS training question
        _svamp("Ed had $ 12.", "How much did Ed have?", "12.0", [{"12.0": ["Ed had $ 12.."]}]),
    ])
    return root


# -- registry ---------------------------------------------------------------------------------

def test_registry():
    assert set(TASKS) == {"mawps", "mawps_gpt4o", "svamp", "gsm8k", "asdiv", "arc_e"}
    for name, task in TASKS.items():
        assert task.name == name and task.checker in CHECKERS
        assert task.splits[0] == "train" and "test_iid" in task.splits
    assert get_task("ARC-E") is TASKS["arc_e"]
    with pytest.raises(ValueError, match="known tasks: mawps"):
        get_task("mmlu")


def test_question_key_ignores_spacing_punctuation_and_the_answer_cue():
    assert question_key("Tim 's cat had kittens . How many ?") == question_key("Tim's cat had kittens. How many? Answer: ")
    assert question_key("house.. How many?. Answer: ") == "house how many"
    assert question_key("Ann has 5 pens.") != question_key("Ann has 6 pens.")


# -- hand-made release ------------------------------------------------------------------------

def test_deduplication_on_a_hand_made_release(tiny_release, tmp_path):
    out = tmp_path / "mawps"
    card = prepare_task("mawps", tiny_release, out)
    iid = card["splits"]["test_iid"]
    assert (iid["released"], iid["removed_in_train"], iid["removed_repeated"], iid["size"]) == (4, 1, 1, 2)
    kept = sorted(r.input for r in load_records(out / "test_iid.jsonl"))
    # The first of two repeats is the one kept.
    assert kept == ["Bo has 4 hats. He loses 1. How many hats are left? Answer: ",
                    "Cy has 9 cups. He breaks 2. How many cups are left? Answer: "]
    ood = card["splits"]["test_ood"]
    assert (ood["released"], ood["removed_in_train"], ood["size"]) == (2, 1, 1)
    train = card["splits"]["train"]
    assert (train["size"], train["annotated"], train["empty_annotations"]) == (2, 2, 1)
    assert json.loads((out / CARD_JSON).read_text()) == card


def test_normalisation_on_a_hand_made_release(tiny_release, tmp_path):
    out = tmp_path / "mawps"
    card = prepare_task("mawps", tiny_release, out)
    train = {r.extra[ORIGIN_FIELD]: r for r in load_records(out / "train.jsonl")}
    first = train["MAWPS/mawps_train.jsonl:1"]
    # The answer cue moves from the MAWPS target into the prompt, as in SVAMP.
    assert (first.input, first.target) == ("Tim 's cat had 3 kittens . How many kittens ? Answer: ", "3.0")
    assert card["splits"]["train"]["normalisation"] == {
        "prompts_changed": 2, "targets_changed": 2, "spans": 4, "spans_rewritten": 0,
        "spans_found_released": 4, "spans_found_normalised": 4, "spans_lost": 0, "spans_gained": 0}
    (ed,) = load_records(out / "test_ood.jsonl")
    # The SVAMP prompt is rebuilt without the doubled full stop, and the span that quoted it follows.
    assert ed.input == "Ed had $ 12. How much did Ed have? Answer: "
    assert ed.important[0].causes == ("Ed had $ 12.",)
    assert card["splits"]["test_ood"]["normalisation"]["spans_rewritten"] == 1
    assert card["splits"]["test_ood"]["normalisation"]["spans_lost"] == 0


def test_limits_take_a_seeded_random_prefix(tiny_release, tmp_path):
    full = prepare_task("mawps", tiny_release, tmp_path / "full", seed=3)
    cut = prepare_task("mawps", tiny_release, tmp_path / "cut", train_limit=1, test_limit=1, seed=3)
    assert cut["sizes"] == {"train": 1, "test_iid": 1, "test_ood": 1, "val": 1}
    assert cut["splits"]["test_iid"]["after_dedup"] == full["sizes"]["test_iid"] == 2
    for split in ("train", "test_iid"):
        whole = (tmp_path / "full" / f"{split}.jsonl").read_text().splitlines()
        assert (tmp_path / "cut" / f"{split}.jsonl").read_text().splitlines() == whole[:1]
    again = prepare_task("mawps", tiny_release, tmp_path / "again", seed=3)
    assert (tmp_path / "again" / "train.jsonl").read_text() == (tmp_path / "full" / "train.jsonl").read_text()
    assert again == full
    with pytest.raises(ValueError, match="train_limit"):
        prepare_task("mawps", tiny_release, tmp_path / "bad", train_limit=0)


def test_errors_name_the_file(tiny_release, tmp_path):
    with pytest.raises(DataError, match="release folder not found"):
        prepare_task("mawps", tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(DataError, match=r"svamp_train\.jsonl: released file not found"):
        prepare_task("svamp", tiny_release, tmp_path / "out")
    _write_jsonl(tiny_release / "SVAMP/svamp_ood.jsonl", [{"Body": "A", "Question": "B?", "input": "A B?", "target": "1"}])
    with pytest.raises(DataError, match=r"svamp_ood\.jsonl:1: input is not the released SVAMP form"):
        prepare_task("mawps", tiny_release, tmp_path / "out")


# -- released files ---------------------------------------------------------------------------

# Figures quoted in docs/TASKS.md: (split, released, removed as in train, removed as repeated, size).
RELEASED_COUNTS = {
    "mawps": [("train", 1239, 0, 0, 1239), ("test_iid", 413, 49, 8, 356), ("test_ood", 1000, 0, 0, 1000),
              ("val", 413, 47, 12, 354)],
    "svamp": [("train", 600, 0, 0, 600), ("test_iid", 200, 0, 0, 200), ("test_ood", 2065, 0, 200, 1865),
              ("val", 200, 0, 0, 200)],
    "gsm8k": [("train", 1319, 0, 0, 1319), ("test_iid", 1319, 0, 0, 1319)],
    "asdiv": [("train", 1772, 0, 0, 1772), ("test_iid", 443, 0, 0, 443)],
    "arc_e": [("train", 2251, 0, 0, 2251), ("test_iid", 2376, 2, 0, 2374), ("val", 570, 0, 0, 570)],
}
RELEASED_COUNTS["mawps_gpt4o"] = RELEASED_COUNTS["mawps"]


@pytest.mark.shared_data
@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_prepares_from_the_released_files(release_dir, tmp_path, name):
    task = get_task(name)
    card = prepare_task(name, release_dir, tmp_path)
    assert list(card["splits"]) == list(task.splits)
    got = [(s, c["released"], c["removed_in_train"], c["removed_repeated"], c["size"]) for s, c in card["splits"].items()]
    assert got == RELEASED_COUNTS[name]
    cue = "\nAnswer: " if name == "arc_e" else " Answer: "
    splits = {split: load_records(tmp_path / f"{split}.jsonl") for split in task.splits}
    train_keys = {question_key(r.input) for r in splits["train"]}
    for split, records in splits.items():
        assert len(records) == card["sizes"][split] > 0
        assert all(r.input.endswith(cue) and not r.input.endswith(" " + cue) for r in records)
        assert all(not r.target.startswith("Answer:") and r.target == r.target.strip() for r in records)
        assert all(r.extra[ORIGIN_FIELD].startswith(card["splits"][split]["source"] + ":") for r in records)
        # Normalisation never loses an annotation span.
        assert card["splits"][split]["normalisation"]["spans_lost"] == 0
        if split != "train":
            keys = [question_key(r.input) for r in records]
            assert len(set(keys)) == len(keys) and not set(keys) & train_keys
    assert card["splits"]["train"]["annotated_share"] == 1.0
    if name == "gsm8k":
        assert all(re.search(r"\n#### -?[\d,.]+$", r.target) for r in splits["train"])


@pytest.mark.shared_data
def test_released_spans_survive_normalisation_record_by_record(release_dir, tmp_path):
    for name, released in (("mawps", "MAWPS/mawps_train.jsonl"), ("svamp", "SVAMP/svamp_train.jsonl")):
        prepare_task(name, release_dir, tmp_path / name)
        by_line = {r.line: r for r in load_records(release_dir / released)}
        checked = 0
        for rec in load_records(tmp_path / name / "train.jsonl"):
            original = by_line[int(rec.extra[ORIGIN_FIELD].rsplit(":", 1)[1])]
            for old, new in zip(original.important, rec.important):
                for a, b in zip((old.effect, *old.causes), (new.effect, *new.causes)):
                    if find_occurrences(original.text, a):
                        assert find_occurrences(rec.text, b), (rec.extra[ORIGIN_FIELD], a)
                        checked += 1
        assert checked > 10000


def _right(checker: str, target: str, index: int) -> str:
    """A correct continuation in one of the formats people and models write."""
    if checker in ("mawps", "svamp"):
        number = target[:-2] if target.endswith(".0") else target  # "84.0" -> "84"
        return f"Answer: {number} apples\n" if index % 2 else f"{number}\nQ:"
    if checker == "gsm8k":
        value = int(target.replace(",", ""))
        return f"They make {value} in all.\n#### {value:,}\n"  # "#### 1,000"
    if checker == "asdiv":
        return re.sub(r"\s*\([^()]*\)$", "", target) + "\n"  # "6 (bags)" -> "6"
    return f"Answer: {target}.\n" if index % 2 else f"({target}) the option"  # "Answer: B."


def _wrong(checker: str, target: str) -> str:
    if checker == "arc_e":
        return "A" if target != "A" else "B"
    return "#### -987654" if checker == "gsm8k" else "-987654"


@pytest.mark.shared_data
@pytest.mark.parametrize("name", sorted(TASKS))
def test_prepared_tests_are_judged_by_the_task_checker(release_dir, tmp_path, monkeypatch, name):
    task = get_task(name)
    prepare_task(name, release_dir, tmp_path)
    for split in task.tests:
        records = load_records(tmp_path / f"{split}.jsonl")
        for make, expected in ((lambda i, r: _right(task.checker, r.target, i), 1.0),
                               (lambda i, r: _wrong(task.checker, r.target), 0.0)):
            predictions = [make(i, r) for i, r in enumerate(records)]
            monkeypatch.setattr(evaluate_module, "generate", lambda *a, _p=predictions, **k: _p)
            result = evaluate_records(None, None, records, task=task.checker, progress=False)
            assert result.task == task.checker
            assert result.accuracy == expected, (split, [r.target for r, ok in zip(records, result.per_item) if ok != expected][:5])


# -- command line -----------------------------------------------------------------------------

@pytest.mark.shared_data
def test_cli_prints_the_card(release_dir, tmp_path, capsys):
    out = tmp_path / "svamp"
    assert main(["data", "task", "svamp", "--release", str(release_dir), "--out", str(out), "--test-limit", "5",
                 "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    for text in ("train.jsonl", "test_ood.jsonl", "MAWPS/mawps_ood.jsonl", "200", "card.json", "cattune data check"):
        assert text in printed
    card = json.loads((out / CARD_JSON).read_text())
    assert card["sizes"] == {"train": 600, "test_iid": 5, "test_ood": 5, "val": 5} and card["seed"] == 1
    assert (out / "card.md").read_text().startswith("# Task card: svamp")


def test_cli_rejects_bad_options(tmp_path, capsys):
    assert main(["data", "task", "mawps", "--release", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "release folder not found" in capsys.readouterr().err
    assert main(["data", "task", "mawps", "--release", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--train-limit", "0"]) == 2
    assert "--train-limit must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "task", "mmlu", "--release", str(tmp_path), "--out", str(tmp_path / "o")])


# -- configs ----------------------------------------------------------------------------------

def test_there_is_a_cpu_and_a_paper_config_per_task():
    names = {p.relative_to(CONFIGS).as_posix() for p in DOWNSTREAM_CONFIGS}
    for task in ("mawps", "svamp", "gsm8k", "asdiv", "arc_e"):
        assert f"experiment_{task}_smollm2.yaml" in names and f"paper/experiment_{task}.yaml" in names


@pytest.mark.parametrize("path", DOWNSTREAM_CONFIGS, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_downstream_configs_load(path):
    config = load_config(ExperimentConfig, path)
    task = get_task(config.task or "")
    assert config.task == task.checker and config.flip is None
    folder = f"runs/tasks/{task.name}"
    assert config.train_file == f"{folder}/train.jsonl"
    assert config.test_files == {s: f"{folder}/{s}.jsonl" for s in task.tests if s.startswith("test_")}
    if config.diagnostics:
        assert config.heatmap_split in config.test_files
    header = path.read_text()
    # The header gives the exact commands: prepare the task folder, then run this file.
    assert f"cattune data task {task.name} --release ../shared/data/cat-release --out {folder}" in header
    assert f"cattune experiment --config {path.relative_to(CONFIGS.parents[1]).as_posix()}" in header


@pytest.mark.slow
@pytest.mark.shared_data
def test_cpu_configs_fit_their_max_length(release_dir, tmp_path):
    """The truncation stated in each CPU config's header holds with the SmolLM2 tokenizer."""
    from cattune.encoding import encode_record
    from cattune.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    truncated = {}
    for path in sorted(CONFIGS.glob("experiment_*_smollm2.yaml")):
        config = load_config(ExperimentConfig, path)
        prepare_task(config.task or "", release_dir, tmp_path / path.stem)
        records = load_records(tmp_path / path.stem / "train.jsonl")
        truncated[config.task] = sum(encode_record(tok, r, max_length=config.train.max_length).truncated for r in records)
    assert truncated == {"arc_e": 0, "asdiv": 0, "gsm8k": 16, "mawps": 0, "svamp": 0}
