"""``cattune data stg | stg-h | check``, called in-process."""

from __future__ import annotations

import json

import pytest
from tiny_models import save_tiny

from cattune.cli.main import main
from cattune.data import stg, stg_h
from cattune.data.records import load_records

BASE_FILES = ("train.jsonl", "test_iid.jsonl", "test_ood.jsonl")


@pytest.mark.parametrize(("command", "module"), [("stg", stg), ("stg-h", stg_h)])
def test_generate_contract(tmp_path, capsys, command, module):
    out = tmp_path / "data"
    assert main(["data", command, "--seed", "3", "--train-size", "40", "--test-size", "15", "--out", str(out)]) == 0
    for name in BASE_FILES + ("test_ood_anticorrelated.jsonl", "test_ood_in_range.jsonl"):
        records = load_records(out / name, require_annotation=True)
        assert len(records) == (40 if name == "train.jsonl" else 15)
        assert set(records[0].extra) == {"noncausal"}
    # The files are exactly the library's output for the same seed and sizes.
    expected = module.generate_splits(3, 40, 15)
    assert [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()] == expected["train"]
    card = json.loads((out / "card.json").read_text())
    assert card["generator"] == module.NAME and card["seed"] == 3
    assert card["sizes"] == {"train": 40, "test_iid": 15, "test_ood": 15, "test_ood_anticorrelated": 15, "test_ood_in_range": 15}
    for split, summary in card["splits"].items():
        labels = [str(o["target"]) for o in expected[split]]
        top = max(set(labels), key=labels.count)
        assert summary["majority_accuracy"] == labels.count(top) / len(labels)
        assert sum(summary["labels"].values()) == len(labels)
    assert (out / "card.md").read_text().startswith(f"# Dataset card: {module.NAME}")
    printed = capsys.readouterr().out
    assert "train.jsonl" in printed and "majority" in printed and "card.json" in printed


def test_stg_options(tmp_path):
    out = tmp_path / "stg"
    assert main(["data", "stg", "--seed", "1", "--train-size", "3000", "--test-size", "0", "--out", str(out),
                 "--middle-risk", "--extra-shifts", "none"]) == 0
    assert sorted(p.name for p in out.glob("*.jsonl")) == sorted(BASE_FILES)
    card = json.loads((out / "card.json").read_text())
    assert card["options"] == {"middle_risk": True, "extra_shifts": []}
    assert "Middle Risk" in card["splits"]["train"]["labels"]
    assert any("Middle Risk branch ON" in note for note in card["notes"])


def test_stg_card_records_the_range_issue(tmp_path):
    out = tmp_path / "stg"
    assert main(["data", "stg", "--seed", "1", "--train-size", "300", "--test-size", "300", "--out", str(out)]) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["value_ranges"]["train"]["Hormones"] == [0, 5]
    assert card["value_ranges"]["test_ood"]["Hormones"] == [1, 10]
    assert "test_ood: Hormones spans 1..10, training only 0..5." in card["notes"]
    assert card["value_ranges"]["test_ood_in_range"]["Hormones"] == [0, 5]


def test_stg_h_label_option(tmp_path):
    out = tmp_path / "h"
    assert main(["data", "stg-h", "--train-size", "5", "--test-size", "2", "--out", str(out),
                 "--label-from-printed", "--extra-shifts", "in-range"]) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["options"] == {"label_from_printed": True, "extra_shifts": ["in_range"]}
    assert (out / "test_ood_in_range.jsonl").exists() and not (out / "test_ood_anticorrelated.jsonl").exists()


@pytest.mark.parametrize("args", [
    ["--extra-shifts", "flipped"],
    ["--train-size", "-1"],
])
def test_bad_generator_options(tmp_path, capsys, args):
    assert main(["data", "stg", "--out", str(tmp_path / "x"), *args]) == 2
    assert "cattune data: error:" in capsys.readouterr().err


def test_check_prints_a_table_and_writes_json(tmp_path, capsys):
    model = save_tiny(tmp_path)
    data = tmp_path / "data"
    assert main(["data", "stg", "--train-size", "30", "--test-size", "5", "--out", str(data)]) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"input": "Smoking: 10 Answer: ", "target": "High Risk",
                               "important": [{"High Risk": ["Smoking: 1"]}]}) + "\n")
    capsys.readouterr()
    out_json = tmp_path / "coverage.json"
    code = main(["data", "check", str(data / "train.jsonl"), str(bad), "--model", str(model),
                 "--max-length", "64", "--json", str(out_json)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "train.jsonl" in printed and "bad.jsonl" in printed and "causes found/missing" in printed
    assert f"{bad}:1" in printed and '"Smoking: 1"' in printed
    figures = json.loads(out_json.read_text())
    assert figures["max_length"] == 64 and figures["skip_adjacent"] is True
    train, worst = figures["files"]
    assert (train["records"], train["cause_spans_found"], train["cause_spans_missing"]) == (30, 90, 0)
    assert (worst["cause_spans_missing"], worst["zero_row_records"]) == (1, 1)


def test_check_reports_bad_input_without_traceback(tmp_path, capsys):
    model = save_tiny(tmp_path)
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"input": "x", "target": "y"}\n{"input": \n')
    assert main(["data", "check", str(bad), "--model", str(model)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: invalid JSON" in err
    assert main(["data", "check", str(tmp_path / "missing.jsonl"), "--model", str(model)]) == 2
    assert "file not found" in capsys.readouterr().err


@pytest.mark.parametrize(("command", "module"), [("stg", stg), ("stg-h", stg_h)])
def test_spans_names_the_noncausal_spans_of_a_file_without_them(tmp_path, capsys, command, module):
    # A generated file with its 'noncausal' field removed stands for a released file.
    splits = module.generate_splits(5, 12, 0)
    bare = tmp_path / "bare.jsonl"
    bare.write_text("".join(json.dumps({k: v for k, v in o.items() if k != "noncausal"}) + "\n" for o in splits["train"]))
    out = tmp_path / "with_spans.jsonl"
    assert main(["data", "spans", str(bare), "--benchmark", command, "--out", str(out)]) == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written == splits["train"]  # spans as the generator names them, everything else kept
    assert "12 records" in capsys.readouterr().out


def test_spans_refuses_another_benchmark_and_overwriting(tmp_path, capsys):
    path = tmp_path / "stg_h.jsonl"
    path.write_text("".join(json.dumps(o) + "\n" for o in stg_h.generate_splits(5, 3, 0)["train"]))
    assert main(["data", "spans", str(path), "--benchmark", "stg", "--out", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"{path}:1: not an STG prompt" in err and "is this a stg file?" in err
    assert not (tmp_path / "x.jsonl").exists()
    assert main(["data", "spans", str(path), "--benchmark", "stg-h", "--out", str(path)]) == 2
    assert "--out must not be FILE itself" in capsys.readouterr().err
