"""``cattune experiment`` end to end on a tiny model and a small generated STG benchmark."""

import json
import re

import pytest
import yaml

from cattune.cli.main import main
from tiny_models import save_tiny


@pytest.fixture(scope="module")
def experiment_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exp")
    model = save_tiny(tmp, "llama")
    config = {
        "name": "tiny",
        "output_dir": str(tmp / "run"),
        "generate": {"benchmark": "stg", "train_size": 48, "test_size": 12, "seed": 3},
        "task": "stg",
        "flip": "stg",
        "flip_splits": ["test_ood"],
        "seeds": [1],
        "train": {"model": str(model), "max_length": 96, "max_steps": 3, "batch_size": 8, "lora": False,
                  "logging_steps": 1, "save_steps": 1000, "tensorboard": False, "num_threads": 1},
        "eval_batch_size": 6,
        "diagnostics_limit": 4,
    }
    path = tmp / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["experiment", "--config", str(path)]) == 0
    return tmp / "run", path


def test_results_json_has_every_figure(experiment_run):
    out, _ = experiment_run
    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]) == {"baseline", "cat"}
    assert {"test_iid", "test_ood", "test_ood_anticorrelated", "test_ood_in_range"} <= set(results["splits"])
    for arm in ("baseline", "cat"):
        for split in results["splits"]:
            entry = results["arms"][arm]["splits"][split]
            for key in ("accuracy", "ci_low", "ci_high", "n", "majority_accuracy"):
                assert key in entry
            assert entry["n"] == 12 and entry["ci_low"] <= entry["accuracy"] <= entry["ci_high"]
        assert "flip_rate" in results["arms"][arm]["splits"]["test_ood"]
        by_change = results["arms"][arm]["splits"]["test_ood"]["flip_by_token_change"]
        assert sum(g["n"] for g in by_change.values()) == 12
        assert sum(g["flips"] for g in by_change.values()) == round(12 * results["arms"][arm]["splits"]["test_ood"]["flip_rate"])
        assert results["arms"][arm]["attention"]["share"]["cause"] >= 0
    assert results["paired"]["test_ood"]["mcnemar"]["p_value"] <= 1
    assert results["cattune_version"] and "git_revision" in results and results["config"]["name"] == "tiny"
    assert "git_revision" in results["arms"]["cat"]["train"]  # the revision each arm trained with
    assert results["base_model"]["attention"]["share"]
    for arm in ("baseline", "cat"):
        (epoch,) = results["arms"][arm]["train"]["losses_by_epoch"]["1"]  # 3 steps: all in epoch 1
        assert epoch["epoch"] == 1 and epoch["lm_loss"] > 0
    assert "attn_loss" in results["arms"]["cat"]["train"]["losses_by_epoch"]["1"][0]


def test_accuracy_matches_the_predictions_files(experiment_run):
    out, _ = experiment_run
    results = json.loads((out / "results.json").read_text())
    for arm in ("baseline", "cat"):
        for split in results["splits"]:
            rows = [json.loads(line) for line in (out / arm / "eval" / f"{split}.predictions.jsonl").read_text().splitlines()]
            assert results["arms"][arm]["splits"][split]["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / len(rows))


def test_report_and_plots_written(experiment_run):
    out, _ = experiment_run
    report = (out / "report.md").read_text()
    assert "baseline" in report and "cat" in report
    assert "## Flips by change in token count" in report
    assert "## Training losses by epoch" in report and "| CAT | 1 | Re-Attention |" in report
    for png in ("accuracy.png", "attention_training.png", "attention_heatmaps.png"):
        assert (out / png).stat().st_size > 5000, png
    assert (out / "baseline" / "model").is_dir() and (out / "cat" / "model").is_dir()


def test_losses_by_epoch_averages_each_term_within_its_epoch():
    from cattune.experiment import losses_by_epoch

    rows = [{"step": 1, "epoch": 0.5, "lm_loss": 4.0, "path_loss": 1.0},
            {"step": 2, "epoch": 1.0, "lm_loss": 2.0, "path_loss": 3.0},  # the last step of epoch 1
            {"step": 3, "epoch": 1.5, "lm_loss": 1.0, "path_loss": float("nan")},
            {"step": 3, "epoch": 1.5, "train_runtime": 9.0}]  # the end-of-training row has no terms
    assert losses_by_epoch(rows) == [{"epoch": 1, "lm_loss": 3.0, "path_loss": 2.0},
                                     {"epoch": 2, "lm_loss": 1.0}]
    assert losses_by_epoch([]) == []


def test_rerun_resumes_without_retraining(experiment_run):
    out, config = experiment_run
    stamp = (out / "cat" / "train_summary.json").stat().st_mtime_ns
    (out / "results.json").unlink()
    (out / "cat" / "eval" / "test_iid.json").unlink()  # as if killed during this evaluation
    assert main(["experiment", "--config", str(config)]) == 0
    assert (out / "cat" / "train_summary.json").stat().st_mtime_ns == stamp
    assert (out / "results.json").exists() and (out / "cat" / "eval" / "test_iid.json").exists()


def test_a_finished_run_is_not_reused_under_other_settings(experiment_run, tmp_path, capsys):
    out, config = experiment_run
    data = yaml.safe_load(config.read_text())
    data["arms"] = {"baseline": {"attn_weight": 0.0}, "cat": {"attn_alpha": 7.0}}
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(data))
    stamp = (out / "results.json").stat().st_mtime_ns
    assert main(["experiment", "--config", str(path)]) == 2
    assert re.search(r"cat was trained with other settings.*attn_alpha: 2.0 -> 7.0", capsys.readouterr().err)
    assert (out / "results.json").stat().st_mtime_ns == stamp  # refused before any work


def test_report_command_rewrites_the_report_from_results_json(experiment_run, tmp_path, capsys):
    out, _ = experiment_run
    assert main(["report", str(out), "--out", str(tmp_path / "again")]) == 0
    # Same results, same run folders: the same report, training curves and heat-maps included.
    assert (tmp_path / "again" / "report.md").read_text() == (out / "report.md").read_text()
    assert {p.name for p in (tmp_path / "again").glob("*.png")} == {p.name for p in out.glob("*.png")}
    assert "| baseline |" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no results.json here" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"arms": ')
    assert main(["report", str(tmp_path / "bad.json")]) == 2
    assert "bad.json:1: not valid JSON" in capsys.readouterr().err


def test_a_subset_of_arms_is_reported_apart(experiment_run, tmp_path, capsys):
    out, config = experiment_run
    stamps = {p: p.stat().st_mtime_ns for p in (out / "results.json", out / "config.yaml", out / "cat" / "train_summary.json")}
    sub = tmp_path / "only-cat"
    assert main(["experiment", "--config", str(config), "--arms", "cat", "--results-dir", str(sub)]) == 0
    results = json.loads((sub / "results.json").read_text())
    assert set(results["arms"]) == {"cat"} and (sub / "report.md").exists() and (sub / "config.yaml").exists()
    full = json.loads((out / "results.json").read_text())
    assert results["arms"]["cat"]["splits"] == full["arms"]["cat"]["splits"]  # the same run, not retrained
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())  # the grid's own files untouched
    capsys.readouterr()
    assert main(["experiment", "--config", str(config), "--arms", "cat,nope"]) == 2
    assert "nope; the arms of" in capsys.readouterr().err


def test_parallel_arms_match_sequential_arms(experiment_run, tmp_path):
    out, config = experiment_run
    data = yaml.safe_load(config.read_text())
    data.update(output_dir=str(tmp_path / "parallel"), parallel_arms=2, diagnostics=False)
    path = tmp_path / "parallel.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["experiment", "--config", str(path)]) == 0
    seq = json.loads((out / "results.json").read_text())
    par = json.loads((tmp_path / "parallel" / "results.json").read_text())
    for arm in ("baseline", "cat"):
        assert (tmp_path / "parallel" / arm / "train.log").exists()
        assert par["arms"][arm]["train"]["final_train_loss"] == pytest.approx(seq["arms"][arm]["train"]["final_train_loss"])
        for split in seq["splits"]:
            assert par["arms"][arm]["splits"][split]["accuracy"] == seq["arms"][arm]["splits"][split]["accuracy"]


def test_training_file_gets_named_noncausal_spans(tmp_path):
    """A released-format STG file (no ``noncausal`` field) is trained on with the spans added, so the
    training logs carry the attention on spurious tokens; the causes stay exactly as annotated."""
    from cattune.data.records import load_records, write_records
    from cattune.experiment import with_noncausal_spans

    prompt = ("Here is the statistical data for a person. Please predict the probability of cancer. Certain gene: 5, "
              "Room size: 6, Clothing size: 4, Exercise: 2, Weight: 4, Hormones: 1, Smoking: 8, Yellow fingers: 12 Answer: ")
    released = tmp_path / "train.jsonl"
    write_records(released, [{"input": prompt, "target": "High Risk",
                              "important": [{"High Risk": ["Exercise: 2", "Weight: 4", "Smoking: 8"]}]}])
    enriched = with_noncausal_spans(released, "stg", folder=tmp_path / "data")
    assert enriched != released
    (rec,) = load_records(enriched)
    assert rec.extra["noncausal"] == {"spurious": ["Clothing size: 4", "Hormones: 1", "Yellow fingers: 12"],
                                      "irrelevant": ["Certain gene: 5", "Room size: 6"]}
    assert [r.causes for r in rec.important] == [("Exercise: 2", "Weight: 4", "Smoking: 8")]
    assert with_noncausal_spans(enriched, "stg", folder=tmp_path / "data") == enriched  # already has them


def test_a_grid_of_variants_and_seeds(experiment_run, tmp_path):
    """Variant arms over two seeds, two runs at a time: every (arm, seed) trained once, results per
    seed, paired tests per arm, the grid table, and the later-rows diagnostic."""
    _, config = experiment_run
    data = yaml.safe_load(config.read_text())
    data.update(output_dir=str(tmp_path / "grid"), parallel_arms=2, seeds=[1, 2], diagnostics_limit=2,
                arms={"baseline": {"attn_weight": 0.0}, "cat-path": {"path_weight": 1.0},
                      "augment": {"attn_weight": 0.0, "augment": "stg"}})
    data["train"]["max_steps"] = 2
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["experiment", "--config", str(path)]) == 0
    out = tmp_path / "grid"
    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]) == {"baseline", "cat-path", "augment"} and results["seeds"] == [1, 2]
    for arm in results["arms"]:
        for folder in (out / arm, out / f"{arm}-seed2"):
            assert json.loads((folder / "train_summary.json").read_text())["global_step"] == 2
        assert set(results["arms"][arm]["splits"]["test_ood"]["per_seed"]) == {"1", "2"}
    assert "cat-path:test_ood" in results["paired"] and "augment:test_ood" in results["paired"]
    # One pair of runs per seed: the difference of the per-seed accuracies and flip rates.
    paired = results["paired"]["augment:test_ood"]
    per_seed = {arm: results["arms"][arm]["splits"]["test_ood"]["per_seed"] for arm in ("baseline", "augment")}
    assert paired["seeds_paired"]["n"] == 2
    assert paired["seeds_paired"]["mean_difference"] == pytest.approx(
        sum(per_seed["augment"][s]["accuracy"] - per_seed["baseline"][s]["accuracy"] for s in ("1", "2")) / 2)
    assert paired["flip_seeds_paired"]["mean_difference"] == pytest.approx(
        sum(per_seed["augment"][s]["flip_rate"] - per_seed["baseline"][s]["flip_rate"] for s in ("1", "2")) / 2)
    for stats in results["arms"]["baseline"]["splits"].values():
        assert 0.0 <= stats["ci_low"] <= stats["accuracy"] <= stats["ci_high"] <= 1.0
    metrics = [json.loads(line) for line in (out / "cat-path" / "metrics.jsonl").read_text().splitlines()]
    assert any("path_loss" in row for row in metrics)
    assert "path" in json.loads((out / "cat-path" / "attention.json").read_text())
    report = (out / "report.md").read_text()
    assert "## Grid" in report and (out / "grid.png").exists()


def test_same_length_flip_is_added_to_a_finished_run(experiment_run):
    out, config = experiment_run
    stamp = (out / "cat" / "eval" / "test_ood.flip.json").stat().st_mtime_ns
    assert main(["experiment", "--config", str(config), "flip_same_length=true"]) == 0
    assert (out / "cat" / "eval" / "test_ood.flip.json").stat().st_mtime_ns == stamp  # cached, not recomputed
    results = json.loads((out / "results.json").read_text())
    for arm in ("baseline", "cat"):
        entry = results["arms"][arm]["splits"]["test_ood"]
        items = [json.loads(line) for line in (out / arm / "eval" / "test_ood.flip_same_length.jsonl").open()]
        assert entry["flip_same_length_rate"] == pytest.approx(sum(i["flipped"] for i in items) / len(items))
        assert entry["flip_same_length_n"] == 12 and entry["per_seed"]["1"]["flip_same_length_rate"] >= 0
        assert all(len(i["perturbed_prompt"]) == len(i["original_prompt"]) for i in items)
        assert "flip_same_length_rate" not in results["arms"][arm]["splits"]["test_iid"]
    assert results["paired"]["test_ood"]["flip_same_length_mcnemar"]["p_value"] <= 1
    assert "flip % (same length)" not in (out / "report.md").read_text()  # no grid section for one pair


def test_intervals_across_seeds_stay_within_0_and_1():
    from cattune.experiment import _seed_interval
    from cattune.stats import seed_summary

    # Three seeds: the t quantile (4.30), not 1.96; the low end would be -0.55 points.
    assert _seed_interval(seed_summary([0.0, 0.0, 0.005])) == (0.0, pytest.approx(0.005 / 3 * (1 + 4.3027), abs=1e-6))
    assert _seed_interval(seed_summary([1.0, 0.99]))[1] == 1.0


def test_token_change_tables_pool_over_seeds():
    from cattune.flip import pool_token_changes

    a = {"0": {"n": 3, "flips": 0, "changes": {}, "rate": 0.0},
         "+1": {"n": 2, "flips": 1, "changes": {"Low Risk -> High Risk": 1}, "rate": 0.5}}
    b = {"-1": {"n": 1, "flips": 1, "changes": {"High Risk -> Low Risk": 1}, "rate": 1.0},
         "+1": {"n": 2, "flips": 2, "changes": {"Low Risk -> High Risk": 2}, "rate": 1.0}}
    pooled = pool_token_changes([a, b])
    assert list(pooled) == ["-1", "0", "+1"]
    assert pooled["+1"] == {"n": 4, "flips": 3, "changes": {"Low Risk -> High Risk": 3}, "rate": 0.75}


def test_run_folders_keep_their_seed_whatever_the_seed_list(tmp_path):
    from cattune.experiment import arm_dir

    # A first call with seeds [42, 43]: the first seed gets the bare folder.
    assert arm_dir(tmp_path, "cat", 42, [42, 43]) == tmp_path / "cat"
    assert arm_dir(tmp_path, "cat", 43, [42, 43]) == tmp_path / "cat-seed43"
    for folder, seed in (("cat", 42), ("cat-seed43", 43)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "lr": 0.001}))
    # A later call with seeds [43, 44] finds seed 43's run, and does not take seed 42's for it.
    assert arm_dir(tmp_path, "cat", 43, [43, 44]) == tmp_path / "cat-seed43"
    assert arm_dir(tmp_path, "cat", 44, [43, 44]) == tmp_path / "cat-seed44"
    assert arm_dir(tmp_path, "cat", 42, [44, 42]) == tmp_path / "cat"
    # A request written before training started counts as the folder's seed too.
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "train_request.yaml").write_text(yaml.safe_dump({"seed": 7}))
    assert arm_dir(tmp_path, "base", 8, [8]) == tmp_path / "base-seed8"
    assert arm_dir(tmp_path, "base", 7, [8, 7]) == tmp_path / "base"


def _numeric_eval(errors):
    known = [e for e in errors if e is not None]
    return {"n": len(errors), "accuracy": sum(e == 0 for e in errors) / len(errors), "ci_low": 0.0, "ci_high": 1.0,
            "majority_accuracy": 0.1, "majority_label": "50", "task": "stg_h",
            "per_item": [e == 0 for e in errors], "absolute_error": errors,
            "mean_absolute_error": sum(known) / len(known), "numeric_answers": len(known), "median_answer_error": 3.0}


def test_numeric_error_is_aggregated_paired_and_reported(tmp_path):
    from cattune.experiment import aggregate
    from cattune.experiment_config import ExperimentConfig
    from cattune.report import findings, numeric_error_table

    errors = {"baseline": {1: [4.0, 2.0, None, 6.0], 2: [2.0, 4.0, 8.0, 2.0]},
              "cat": {1: [0.0, 1.0, 2.0, None], 2: [1.0, 0.0, 1.0, 2.0]}}
    per_run = {arm: {seed: {"test_ood": _numeric_eval(e)} for seed, e in by_seed.items()}
               for arm, by_seed in errors.items()}
    config = ExperimentConfig(train_file="t.jsonl", test_files={"test_ood": "o.jsonl"}, seeds=[1, 2],
                              arms={"baseline": {"attn_weight": 0.0}, "cat": {}})
    results = aggregate(config, per_run, ["test_ood"], {})
    base = results["arms"]["baseline"]["splits"]["test_ood"]
    assert base["per_seed"]["1"]["mean_absolute_error"] == 4.0
    assert base["mean_absolute_error"] == pytest.approx((4.0 + 4.0) / 2)
    assert base["numeric_answers"] == 7 and base["numeric_answer_share"] == 7 / 8
    assert base["mae_ci_method"] == "seeds" and base["mae_ci_low"] == 4.0 == base["mae_ci_high"]
    cat = results["arms"]["cat"]["splits"]["test_ood"]
    assert cat["mean_absolute_error"] == pytest.approx(1.0) and cat["mae_ci_low"] == pytest.approx(1.0)
    paired = results["paired"]["test_ood"]
    # Only items where both arms answered with a number: 2 of seed 1, all 4 of seed 2.
    boot = paired["absolute_error_bootstrap"]
    assert boot["n"] == 6
    assert boot["mean_difference"] == pytest.approx(((0 - 4) + (1 - 2) + (1 - 2) + (0 - 4) + (1 - 8) + (2 - 2)) / 6)
    assert paired["absolute_error_seeds_paired"]["n"] == 2
    table = numeric_error_table(results)
    assert "test_ood abs. error" in table and "87.5% with a number" in table
    assert f"{boot['mean_difference']:+.2f}" in table
    assert "| median answer | 3.00 |" in table
    found = findings(results)
    sentence = next(s for s in found if "vs baseline mean absolute error on test_ood" in s)
    assert "CAT vs baseline" in sentence and "6 items where both answered with a number" in sentence
    # The baseline (4.0) is no better than always answering the median (3.0); CAT (1.0) is.
    assert [s.split("'s")[0] for s in found if "median target" in s] == ["baseline"]


def test_numeric_error_of_a_cached_evaluation_comes_from_its_predictions(tmp_path):
    from cattune.experiment import _numeric_error_from_predictions

    predictions = tmp_path / "test_ood.predictions.jsonl"
    rows = [{"answer": "60", "target": "62"}, {"answer": "", "target": "40"}, {"answer": "55", "target": "55"}]
    predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    filled = _numeric_error_from_predictions("stg_h", predictions)
    assert filled == {"absolute_error": [2.0, None, 0.0], "mean_absolute_error": 1.0, "numeric_answers": 2,
                      "median_answer_error": pytest.approx(22 / 3)}
    assert _numeric_error_from_predictions("stg", predictions) is None
    assert _numeric_error_from_predictions("stg_h", tmp_path / "missing.jsonl") is None


def test_arms_are_compared_with_the_named_reference_arm():
    from cattune.config import ConfigError
    from cattune.experiment import aggregate
    from cattune.experiment_config import ExperimentConfig
    from cattune.report import comparison_table, findings

    def stg_eval(correct):
        return {"n": len(correct), "accuracy": sum(correct) / len(correct), "ci_low": 0.0, "ci_high": 1.0,
                "majority_accuracy": 0.5, "majority_label": "Low Risk", "task": "stg", "per_item": correct}

    per_run = {"baseline": {1: {"test_ood": stg_eval([True] * 8)}},
               "plain-lr2": {1: {"test_ood": stg_eval([False] * 6 + [True] * 2)}},
               "cat": {1: {"test_ood": stg_eval([True] * 7 + [False])}}}
    arms = {"baseline": {"attn_weight": 0.0}, "plain-lr2": {"attn_weight": 0.0, "lr": 2e-3}, "cat": {}}
    config = ExperimentConfig(train_file="t.jsonl", test_files={"test_ood": "o.jsonl"}, seeds=[1], arms=arms,
                              reference="plain-lr2")
    results = aggregate(config, per_run, ["test_ood"], {})
    assert results["reference"] == "plain-lr2"
    assert set(results["paired"]) == {"test_ood", "baseline:test_ood"}  # CAT and baseline, each minus plain-lr2
    assert results["paired"]["test_ood"]["accuracy_difference"] == pytest.approx(7 / 8 - 2 / 8)
    assert results["paired"]["test_ood"]["mcnemar"]["b01"] == 6  # items only CAT got right
    table = comparison_table(results)
    assert "| CAT - plain-lr2 | +62.5" in table and "| baseline - plain-lr2 |" in table
    assert table.index("| plain-lr2 |") < table.index("| CAT |")  # the reference is listed first
    sentence = next(s for s in findings(results) if s.startswith("CAT vs plain-lr2 on test_ood"))
    assert "6 items only CAT answered correctly, 1 only plain-lr2" in sentence and sentence.endswith("CAT is not significantly different.")  # 8 items: p = 0.125
    with pytest.raises(ConfigError, match="reference 'plain' is not an arm"):
        ExperimentConfig(train_file="t.jsonl", test_files={"test_ood": "o.jsonl"}, arms=arms, reference="plain").validate()
