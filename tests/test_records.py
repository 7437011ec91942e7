"""The release-format loader: every released file loads; malformed input fails with file and line."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from cattune.data.records import DataError, Record, Relation, load_records, parse_record, write_records

# Sizes from the release README.
RELEASED_SIZES = {
    "STG/spurious_token_game_train3.jsonl": 1600, "STG/spurious_token_game_train3_M.jsonl": 800,
    "STG/spurious_token_game_train3_S.jsonl": 400, "STG/spurious_token_game_test3.jsonl": 400,
    "STG/spurious_token_game_ood3_2.jsonl": 400,
    "STG_H/STG_H_train.jsonl": 3000, "STG_H/STG_H_iid_test.jsonl": 1000, "STG_H/STG_H_ood_test.jsonl": 1000,
    "MAWPS/mawps_train.jsonl": 1239, "MAWPS/mawps_train_gpt4o.jsonl": 1239, "MAWPS/mawps_val.jsonl": 413,
    "MAWPS/mawps_test.jsonl": 413, "MAWPS/mawps_ood.jsonl": 2065,
    "SVAMP/svamp_train.jsonl": 600, "SVAMP/svamp_val.jsonl": 200, "SVAMP/svamp_test.jsonl": 200,
    "SVAMP/svamp_ood.jsonl": 1000,
    "GSM8k/gsm8k_val.jsonl": 1319, "GSM8k/gsm8k_test.jsonl": 1319,
    "ARC_E/ARC_E_train.jsonl": 2251, "ARC_E/ARC_E_val.jsonl": 570, "ARC_E/ARC_E_test.jsonl": 2376,
    "ASDiv/merged_asdiv.jsonl": 2215,
}


def test_every_released_file_is_listed(release_dir):
    on_disk = {str(p.relative_to(release_dir)) for p in release_dir.rglob("*.jsonl")}
    assert on_disk == set(RELEASED_SIZES)


@pytest.mark.parametrize("name", sorted(RELEASED_SIZES))
def test_every_released_file_loads(release_dir, name):
    records = load_records(release_dir / name)
    assert len(records) == RELEASED_SIZES[name]
    for rec in records:
        assert isinstance(rec.input, str) and isinstance(rec.target, str)
        assert rec.source == str(release_dir / name) and rec.line >= 1
        for rel in rec.important or ():
            assert rel.effect and rel.causes and all(isinstance(c, str) and c for c in rel.causes)


def test_released_annotation_counts(release_dir):
    asdiv = load_records(release_dir / "ASDiv/merged_asdiv.jsonl")
    assert sum(r.is_annotated for r in asdiv) == 1772
    assert not any(r.is_annotated for r in load_records(release_dir / "STG/spurious_token_game_test3.jsonl"))
    stg_h = load_records(release_dir / "STG_H/STG_H_train.jsonl", require_annotation=True)
    assert stg_h[0].raw_target == int(stg_h[0].target) and stg_h[0].to_json()["target"] == stg_h[0].raw_target


def write_lines(path, lines: list[bytes | str]) -> None:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))


GOOD = json.dumps({"input": "Q? Answer: ", "target": "4"})


@pytest.mark.parametrize(("bad_line", "message"), [
    ('{"input": "x", "target": ', "invalid JSON"),
    ('["input", "target"]', "expected a JSON object, got list"),
    ('{"input": "x"}', "missing field(s) 'target'"),
    ('{"target": "x"}', "missing field(s) 'input'"),
    ('{"input": 3, "target": "x"}', "'input' must be a string, got int"),
    ('{"input": "x", "target": ["a"]}', "'target' must be a string or a number, got list"),
    ('{"input": "x", "target": true}', "'target' must be a string or a number, got bool"),
    ('{"input": "x", "target": null}', "'target' must be a string or a number, got NoneType"),
    ('{"input": "x", "target": "y", "important": {"y": ["x"]}}', "'important' must be a list"),
    (b'{"input": "caf\xe9", "target": "x"}', "not valid UTF-8"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "bad.jsonl"
    write_lines(path, [GOOD, "", bad_line, GOOD])
    with pytest.raises(DataError) as info:
        load_records(path)
    err = info.value
    assert err.path == str(path) and err.line == 3  # blank lines count for the line number
    assert message in str(err)
    assert str(err).startswith(f"{path}:3: ")


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match="no records") as info:
        load_records(path)
    assert info.value.path == str(path) and info.value.line is None


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_records(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="is a directory"):
        load_records(tmp_path)


def test_require_annotation_names_the_first_unannotated_line(tmp_path):
    path = tmp_path / "mixed.jsonl"
    write_lines(path, [json.dumps({"input": "a ", "target": "b", "important": []}), GOOD])
    assert len(load_records(path)) == 2
    with pytest.raises(DataError, match="no 'important' annotation") as info:
        load_records(path, require_annotation=True)
    assert info.value.line == 2


def test_annotation_quirks_are_normalised_and_counted():
    rec = parse_record({
        "input": "Tom has 3 apples and 4 pears. Answer: ",
        "target": 7,
        "important": [
            {},
            {"7": ["3 apples", "4 pears"], "4 pears": "pears"},
            {"Answer": []},
            {"apples": ["", None, "Tom"]},
            "not an object",
        ],
    })
    assert rec.target == "7" and rec.raw_target == 7
    assert rec.important == (
        Relation("7", ("3 apples", "4 pears")),
        Relation("4 pears", ("pears",)),
        Relation("apples", ("Tom",)),
    )
    assert rec.annotation_repairs == Counter({
        "empty_relation": 1, "several_effects_in_one_object": 1, "cause_list_was_a_string": 1,
        "relation_without_causes": 1, "empty_cause_span": 2, "relation_not_an_object": 1,
    })


def test_write_and_reload_keeps_extra_fields_and_target_type(tmp_path):
    path = tmp_path / "out" / "data.jsonl"
    objs = [
        {"input": "A: ", "target": 32, "important": [{"Answer: 32": ["4.5", "12%"]}], "noncausal": {"spurious": ["1"]}},
        {"input": "B: ", "target": "Low Risk", "id": 9},
    ]
    write_records(path, [parse_record(objs[0]), objs[1]])
    assert [json.loads(line) for line in path.read_text().splitlines()] == objs
    again = load_records(path)
    assert again[0].extra == {"noncausal": {"spurious": ["1"]}} and again[1].extra == {"id": 9}
    assert [r.to_json() for r in again] == objs
    assert not list(path.parent.glob(".*tmp"))  # the atomic write left no temporary file


def test_record_text_is_input_plus_target():
    rec = Record(input="Q Answer: ", target="High Risk")
    assert rec.text == "Q Answer: High Risk" and not rec.is_annotated
