"""Human-written example files and the prompt built from them."""

import json

import pytest

from cattune.annotate.examples import load_example_set, shipped_example_sets
from cattune.annotate.prompt import ITEM_MARKER, build_messages, feedback_message
from cattune.annotate.replies import parse_reply
from cattune.data.records import DataError, parse_record


def test_shipped_example_sets_load_and_validate():
    shipped = shipped_example_sets()
    assert {"stg", "word_problems", "gsm8k", "arc"} <= set(shipped)
    for name in shipped:
        examples = load_example_set(name)  # raises if a span is not in its text or a cause comes late
        assert examples.task and examples.examples
        assert all(ex.important for ex in examples.examples)


def _write(tmp_path, text, name="ex.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_example_file_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="not found.*shipped sets: arc"):
        load_example_set(tmp_path / "missing.yaml")
    with pytest.raises(DataError, match=r"bad\.yaml:2: invalid YAML"):
        load_example_set(_write(tmp_path, "task: x\nexamples: [: :\n", "bad.yaml"))
    with pytest.raises(DataError, match="non-empty 'examples'"):
        load_example_set(_write(tmp_path, "task: x\nexamples: []\n"))
    with pytest.raises(DataError, match="missing 'task'"):
        load_example_set(_write(tmp_path, 'examples: [{input: "a b", target: "c", important: [{c: [a]}]}]\n'))
    with pytest.raises(DataError, match="example 1: missing field"):
        load_example_set(_write(tmp_path, 'task: t\nexamples: [{input: "a b"}]\n'))
    with pytest.raises(DataError, match="example 2: no 'important'"):
        load_example_set(_write(tmp_path, 'task: t\nexamples:\n - {input: "a ", target: "b", important: [{b: [a]}]}\n'
                                          ' - {input: "a ", target: "b"}\n'))
    with pytest.raises(DataError, match="example 1: cause span 'z' .* is not in text"):
        load_example_set(_write(tmp_path, 'task: t\nexamples: [{input: "a ", target: "b", important: [{b: [z]}]}]\n'))
    with pytest.raises(DataError, match="is not before effect"):
        load_example_set(_write(tmp_path, 'task: t\nexamples: [{input: "a ", target: "b", important: [{a: [b]}]}]\n'))


def test_json_example_file(tmp_path):
    path = tmp_path / "ex.json"
    path.write_text(json.dumps({"task": "t", "examples": [{"input": "x is 2 so ", "target": 4, "important": [{"4": ["2"]}]}]}))
    assert load_example_set(path).examples[0].target == "4"


def test_messages_show_examples_as_turns_and_the_item_last():
    examples = load_example_set("word_problems")
    record = parse_record({"input": "Tom has 3 cats. How many cats? Answer: ", "target": "3"})
    messages = build_messages(examples, record, task="counting cats")
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * len(examples.examples) + ["user"]
    assert "The task: counting cats." in messages[0]["content"]
    assert examples.guidance.splitlines()[0] in messages[0]["content"]
    assert messages[-1]["content"].split(ITEM_MARKER, 1)[1] == record.text
    # Each example's assistant turn parses back to its own relations.
    for example, answer in zip(examples.examples, messages[2::2]):
        assert parse_reply(answer["content"]) == [(r.effect, list(r.causes)) for r in example.important]
    assert build_messages(examples, record, task="counting cats") == messages  # deterministic: the cache key
    assert ITEM_MARKER not in feedback_message("bad")
