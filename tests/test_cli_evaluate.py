import json
import random

import pytest

import cattune.cli.evaluate as cli_evaluate
from cattune.cli.main import main
from cattune.data.records import write_records
from tiny_models import save_tiny

NAMES = ["Smoking", "Weight", "Exercise", "Yellow fingers", "Clothing size", "Hormones", "Certain gene", "Room size"]
PREFIX = "Here is the statistical data for a person. Please predict the probability of cancer. "


def write_stg_file(path, n=6, seed=0):
    """A small file in the released STG format (so the STG perturbation can parse it)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        pairs = ", ".join(f"{name}: {rng.randint(1, 10)}" for name in rng.sample(NAMES, len(NAMES)))
        rows.append({"input": f"{PREFIX}{pairs} Answer: ", "target": rng.choice(["Low Risk", "Low Risk", "High Risk"])})
    write_records(path, rows)
    return path


@pytest.fixture
def tiny_model_dir(tmp_path):
    return save_tiny(tmp_path, "llama", initializer_range=0.2)


def test_evaluate_writes_json_and_predictions(tmp_path, tiny_model_dir, capsys):
    data = write_stg_file(tmp_path / "stg_test.jsonl")
    out = tmp_path / "results" / "eval.json"
    rc = main(["evaluate", "--model", str(tiny_model_dir), "--data", str(data), "--json", str(out), "--batch-size", "4"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "majority 'Low Risk'" in printed
    report = json.loads(out.read_text())
    assert report["model"]["argument"] == str(tiny_model_dir)
    assert report["cattune_version"] and "git_revision" in report
    assert report["config"]["batch_size"] == 4 and report["config"]["decoding"] == "greedy"
    result = report["results"][str(data)]
    for key in ("accuracy", "n", "ci_low", "ci_high", "majority_accuracy", "majority_label", "task", "predictions"):
        assert key in result
    assert result["task"] == "stg" and result["n"] == 6
    assert result["majority_accuracy"] == pytest.approx(
        max(sum(1 for line in data.read_text().splitlines() if t in line) for t in ("Low Risk", "High Risk")) / 6)
    predictions = tmp_path / "results" / "eval-predictions" / "stg_test.predictions.jsonl"
    assert result["predictions"] == str(predictions)
    lines = [json.loads(x) for x in predictions.read_text().splitlines()]
    assert len(lines) == 6
    assert result["accuracy"] == sum(line["correct"] for line in lines) / 6
    assert result["ci_low"] <= result["accuracy"] <= result["ci_high"]


def test_evaluate_limit_and_several_files(tmp_path, tiny_model_dir):
    a = write_stg_file(tmp_path / "a" / "test.jsonl", n=5)
    b = write_stg_file(tmp_path / "b" / "test.jsonl", n=5, seed=1)
    out = tmp_path / "eval.json"
    rc = main(["evaluate", "--model", str(tiny_model_dir), "--data", str(a), str(b), "--limit", "3", "--json", str(out)])
    assert rc == 0
    results = json.loads(out.read_text())["results"]
    assert [r["n"] for r in results.values()] == [3, 3]
    # Two files with the same name get distinct predictions files.
    assert len({r["predictions"] for r in results.values()}) == 2


def test_evaluate_reports_bad_input_without_a_traceback(tmp_path, tiny_model_dir, capsys):
    rc = main(["evaluate", "--model", str(tiny_model_dir), "--data", str(tmp_path / "missing.jsonl")])
    assert rc == 2
    assert "missing.jsonl: file not found" in capsys.readouterr().err
    data = write_stg_file(tmp_path / "d.jsonl")
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data", str(data), "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
    odd = tmp_path / "odd.jsonl"
    write_records(odd, [{"input": "Capital of France? Answer: ", "target": "Paris"}])
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data", str(odd)]) == 2
    assert "cannot tell which task" in capsys.readouterr().err


def test_flip_rate_names_a_missing_perturbation(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setitem(cli_evaluate.FLIP_PERTURBATIONS, "stg", "cattune.data.no_such_benchmark")
    data = write_stg_file(tmp_path / "d.jsonl")
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data", str(data), "--flip-rate", "stg"]) == 2
    assert "needs cattune.data.no_such_benchmark.redraw_spurious" in capsys.readouterr().err


def write_numeric_file(path):
    write_records(path, [{"input": "Ruth starts with 8 apples. She shares 3. How many apples? Answer: ", "target": "5.0"}])
    return path


def test_flip_rate_with_the_stg_perturbation(tmp_path, tiny_model_dir):
    pytest.importorskip("cattune.data.stg")
    data = write_stg_file(tmp_path / "ood.jsonl", n=8)
    numeric = write_numeric_file(tmp_path / "mawps.jsonl")
    out = tmp_path / "eval.json"
    rc = main(["evaluate", "--model", str(tiny_model_dir), "--data", str(data), str(numeric), "--flip-rate", "stg",
               "--seed", "3", "--json", str(out)])
    assert rc == 0
    results = json.loads(out.read_text())["results"]
    assert "flip" not in results[str(numeric)]  # only files of the flip's task get a flip rate
    flip = results[str(data)]["flip"]
    assert flip["n"] == 8 and flip["seed"] == 3 and flip["unchanged_prompts"] == 0
    items = [json.loads(x) for x in open(flip["per_item"])]
    assert flip["flips"] == sum(item["flipped"] for item in items)
    assert flip["rate"] == flip["flips"] / 8


def test_same_length_flip_rate(tmp_path, tiny_model_dir, capsys):
    pytest.importorskip("cattune.data.stg")
    data = write_stg_file(tmp_path / "ood.jsonl", n=8)
    out = tmp_path / "eval.json"
    rc = main(["evaluate", "--model", str(tiny_model_dir), "--data", str(data), "--flip-rate", "stg", "--same-length",
               "--json", str(out)])
    assert rc == 0
    assert "keeping their printed lengths" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["config"]["same_length"] is True
    items = [json.loads(x) for x in open(report["results"][str(data)]["flip"]["per_item"])]
    assert all(len(i["perturbed_prompt"]) == len(i["original_prompt"]) for i in items)
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data", str(data), "--same-length"]) == 2
    assert "give --flip-rate" in capsys.readouterr().err


def test_flip_rate_without_a_file_of_its_task_fails_before_loading_the_model(tmp_path, capsys):
    pytest.importorskip("cattune.data.stg")
    numeric = write_numeric_file(tmp_path / "mawps.jsonl")
    rc = main(["evaluate", "--model", str(tmp_path / "no-such-model"), "--data", str(numeric), "--flip-rate", "stg"])
    assert rc == 2
    assert "no file is a stg file" in capsys.readouterr().err


@pytest.mark.shared_data
def test_flip_rate_with_the_stg_h_perturbation(tmp_path, tiny_model_dir, release_dir):
    pytest.importorskip("cattune.data.stg_h")
    lines = (release_dir / "STG_H" / "STG_H_ood_test.jsonl").read_text().splitlines()[:4]
    data = tmp_path / "stg_h_ood.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "eval.json"
    rc = main(["evaluate", "--model", str(tiny_model_dir), "--data", str(data), "--flip-rate", "stg_h",
               "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())["results"][str(data)]
    assert result["task"] == "stg_h" and result["n"] == 4
    assert result["flip"]["n"] == 4 and result["flip"]["unchanged_prompts"] == 0
