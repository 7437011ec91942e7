import copy

import pytest

from cattune.report import (
    comparison_table,
    compare_arms,
    findings,
    grid_table,
    plot_attention_over_training,
    plot_grid_summary,
    plot_heatmaps,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _split(acc, low, high, majority, n=400, flip=None):
    stats = {"accuracy": acc, "ci_low": low, "ci_high": high, "n": n, "majority_accuracy": majority,
             "ci_method": "wilson"}
    if flip is not None:
        stats.update({"flip_rate": flip[0], "flip_ci_low": flip[1], "flip_ci_high": flip[2], "flip_n": n})
    return stats


def _attention(cause, spurious, layers=4):
    return {"cause": cause, "spurious": spurious, "irrelevant": 0.02, "sink": 0.6, "other": 0.3,
            "per_layer": {"cause": [cause] * layers, "spurious": [spurious] * layers,
                          "irrelevant": [0.02] * layers}}


@pytest.fixture
def results():
    """The FEASIBILITY numbers: CAT worse OOD (p = 0.029) and flipping more, attention moved to causes."""
    return {
        "name": "stg-smollm2", "cattune_version": "0.1.0", "git_revision": "abc123",
        "created": "2026-11-24T10:00:00",
        "config": {"name": "stg-smollm2", "train_file": "data/stg_train_M.jsonl",
                   "test_files": {"test_iid": "iid.jsonl", "test_ood": "ood.jsonl"},
                   "seeds": [42], "arms": {"baseline": {"attn_weight": 0.0}, "cat": {}},
                   "train": {"model": "smollm2-135m", "attn_weight": 1.0, "attn_alpha": 2.0,
                             "attn_loss_type": "div", "attn_schedule": "exp"}},
        "seeds": [42],
        "splits": ["test_iid", "test_ood"],
        "arms": {
            "baseline": {
                "splits": {"test_iid": _split(0.930, 0.901, 0.951, 0.688),
                           "test_ood": _split(0.752, 0.707, 0.792, 0.665, flip=(0.198, 0.161, 0.240))},
                "attention": _attention(0.05, 0.03),
                "train": {"steps": 300, "seconds": 1500.0, "final_lm_loss": 0.01},
            },
            "cat": {
                "splits": {"test_iid": _split(0.922, 0.891, 0.945, 0.688),
                           "test_ood": _split(0.688, 0.641, 0.731, 0.665, flip=(0.425, 0.377, 0.474))},
                "attention": _attention(0.20, 0.02),
                "train": {"steps": 300, "seconds": 1560.0, "final_lm_loss": 0.012},
            },
        },
        "base_model": {"attention": _attention(0.04, 0.03)},
        "paired": {
            "test_iid": {"mcnemar": {"b01": 10, "b10": 13, "p_value": 0.678}, "accuracy_difference": -0.008,
                         "diff_ci_low": -0.031, "diff_ci_high": 0.015},
            "test_ood": {"mcnemar": {"b01": 53, "b10": 79, "p_value": 0.029}, "accuracy_difference": -0.064,
                         "diff_ci_low": -0.110, "diff_ci_high": -0.019,
                         "flip_mcnemar": {"b01": 101, "b10": 10, "p_value": 1.2e-19}},
        },
    }


@pytest.fixture
def metrics():
    def rows(ratio, cause):
        out = [{"step": s, "epoch": s / 50, "loss": 1.0 / s, "lm_loss": 0.9 / s, "attn_ratio": ratio * (1 + s / 100),
                "attn_share_cause": cause, "attn_share_spurious": 0.03, "attn_share_irrelevant": 0.02}
               for s in range(5, 105, 5)]
        out[3].pop("attn_ratio")  # a row missing a key must be skipped, not crash
        out.append({"step": 100, "train_runtime": 1500.0})  # the Trainer's end-of-run summary row
        return out
    return {"baseline": rows(0.4, 0.05), "cat": rows(3.0, 0.2)}


@pytest.fixture
def heatmaps():
    tokens = ["<s>", "Smoking", ":", " 7", ",", " Yellow fingers", ":", " $10", " Answer", ":"]
    categories = {"cause": [1, 2, 3], "spurious": [5, 6, 7], "irrelevant": []}
    def hm(weight):
        return {"tokens": tokens, "row_labels": ["High", " Risk"], "title": "test_ood item 0",
                "matrix": [[0.6] + [weight] * 9, [0.5] + [weight / 2] * 9], "categories": categories}
    return {"baseline": hm(0.02), "cat": hm(0.04)}


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000, f"{path.name} is suspiciously small ({len(data)} bytes)"


def test_write_report_writes_every_file(results, metrics, heatmaps, tmp_path):
    written = write_report(results, tmp_path / "run", metrics=metrics, heatmaps=heatmaps)
    assert set(written) == {"report", "accuracy", "attention_training", "attention_layers", "heatmaps"}
    for name, path in written.items():
        assert path.is_file() and path.parent == tmp_path / "run"
        if name != "report":
            _assert_png(path)
    report = written["report"].read_text()
    assert report.startswith("# cattune experiment: stg-smollm2")
    for image in ("accuracy.png", "attention_training.png", "attention_layers.png", "attention_heatmaps.png"):
        assert f"]({image})" in report  # relative, so the run folder can be moved
    assert "smollm2-135m" in report and "abc123" in report and "0.1.0" in report
    assert "attention term off" in report and "attention term: loss_type div, alpha 2.0" in report
    assert "25.0 min" in report
    assert comparison_table(results) in report
    assert "## How to read this" in report and "## Attention (diagnostic)" in report
    assert "## Per seed" not in report  # one seed: nothing to break down
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_table_formats_numbers_n_majority_and_paired_row(results):
    table = comparison_table(results)
    lines = table.splitlines()
    assert lines[0] == ("| arm | test_iid acc % (n=400) | test_ood acc % (n=400) | test_ood flip % (n=400) |")
    assert lines[2] == "| baseline | 93.0 [90.1, 95.1] | 75.2 [70.7, 79.2] | 19.8 [16.1, 24.0] |"
    assert lines[3] == "| CAT | 92.2 [89.1, 94.5] | 68.8 [64.1, 73.1] | 42.5 [37.7, 47.4] |"
    assert lines[4] == "| majority class | 68.8 | 66.5 | — |"
    assert lines[5] == ("| CAT - baseline | -0.8 [-3.1, +1.5], p = 0.678 | "
                        "-6.4 [-11.0, -1.9], p = 0.029 | +22.7, p = 1.2e-19 |")
    assert "Wilson score interval" in table and "lower is better" in table


def test_findings_on_feasibility_numbers(results):
    text = findings(results)
    assert text[0].startswith("One seed per arm (42)")
    ood = next(s for s in text if s.startswith("CAT vs baseline on test_ood"))
    assert ood == ("CAT vs baseline on test_ood: 68.8% vs 75.2% (difference -6.4 points, 95% CI [-11.0, -1.9]; "
                   "exact McNemar p = 0.029; 53 items only CAT answered correctly, 79 only the baseline; "
                   "n = 400): CAT is worse.")
    iid = next(s for s in text if s.startswith("CAT vs baseline on test_iid"))
    assert iid.endswith("CAT is not significantly different.")
    assert ("Flip rate on test_ood (share of answers that change when only the spurious values change; lower is "
            "better): baseline 19.8% [16.1, 24.0] vs CAT 42.5% [37.7, 47.4].") in text
    assert ("CAT vs baseline flip rate on test_ood: difference +22.7 points (exact McNemar p = 1.2e-19): "
            "CAT is worse (its answers depend on the spurious values more often).") in text
    attention = next(s for s in text if s.startswith("Compared with the baseline, CAT"))
    assert "raised the share of attention on the causes from 5.0% to 20.0%" in attention
    assert "lowered the share of attention on the spurious values from 3.0% to 2.0%" in attention
    assert "before training: cause 4.0%, spurious 3.0%" in attention
    assert any("behaviour did not follow" in s for s in text)
    assert any(s.startswith("Attention is a diagnostic") for s in text)
    # The released recipe's OOD interval reaches the majority class; its high flip rate needs no caveat.
    assert ("CAT on test_ood (68.8%) is not clearly above the majority-class baseline (66.5%): "
            "its 95% interval reaches it.") in text
    assert not any("says little" in s for s in text)


def test_findings_say_better_when_cat_wins_significantly(results):
    results["arms"]["cat"]["splits"]["test_ood"].update(accuracy=0.81, ci_low=0.77, ci_high=0.85, flip_rate=0.05,
                                                        flip_ci_low=0.03, flip_ci_high=0.08)
    results["paired"]["test_ood"].update(accuracy_difference=0.058, diff_ci_low=0.02, diff_ci_high=0.09,
                                         mcnemar={"b01": 60, "b10": 37, "p_value": 0.025},
                                         flip_mcnemar={"b01": 5, "b10": 64, "p_value": 1e-12})
    text = findings(results)
    ood = next(s for s in text if s.startswith("CAT vs baseline on test_ood"))
    assert ood.endswith("CAT is better.") and "60 items only CAT answered correctly" in ood
    assert "CAT is better (its answers depend on the spurious values less often)" in \
        next(s for s in text if s.startswith("CAT vs baseline flip rate on test_ood"))
    assert not any("behaviour did not follow" in s for s in text)
    results["arms"]["cat"]["splits"]["test_ood"]["flip_rate"] = 0.40
    results["paired"]["test_ood"]["flip_mcnemar"] = {"b01": 90, "b10": 8, "p_value": 1e-15}
    assert any("behaviour is mixed" in s for s in findings(results))


def test_findings_not_significant_when_p_is_large(results):
    results["paired"]["test_ood"]["mcnemar"]["p_value"] = 0.15
    results["paired"]["test_ood"]["flip_mcnemar"]["p_value"] = 0.4
    text = findings(results)
    assert next(s for s in text if s.startswith("CAT vs baseline on test_ood")).endswith(
        "CAT is not significantly different.")
    assert "CAT is not significantly different (no detectable change" in \
        next(s for s in text if s.startswith("CAT vs baseline flip rate on test_ood"))


def test_without_paired_block_verdict_falls_back_to_intervals(results):
    del results["paired"]
    # Non-overlap of the arms' own intervals is conservative: OOD accuracy (-6.4) no longer qualifies.
    ood = compare_arms(results, "test_ood")
    assert ood.verdict == "not significantly different" and ood.p_value is None and "overlap" in ood.basis
    flip = compare_arms(results, "test_ood", "flip_rate")
    assert flip.verdict == "worse" and "do not overlap" in flip.basis
    table = comparison_table(results)
    assert "| CAT - baseline | -0.8 | -6.4 | +22.7 |" in table and "no paired test was recorded" in table
    for stats in (results["arms"]["cat"]["splits"]["test_ood"], results["arms"]["baseline"]["splits"]["test_ood"]):
        del stats["ci_low"], stats["ci_high"]
    undetermined = next(s for s in findings(results) if s.startswith("CAT vs baseline on test_ood"))
    assert undetermined.endswith("no claim can be made.")


def test_discordant_counts_not_named_when_they_contradict_the_difference(results):
    results["paired"]["test_ood"]["mcnemar"].update(b01=79, b10=53)
    ood = next(s for s in findings(results) if s.startswith("CAT vs baseline on test_ood"))
    assert "only CAT answered correctly" not in ood and ood.endswith("CAT is worse.")


def test_majority_check(results):
    cat_ood = results["arms"]["cat"]["splits"]["test_ood"]
    cat_ood.update(ci_low=0.67)
    assert "Every arm is above the majority-class baseline on every split (95% intervals clear of it)." in \
        findings(results)
    # A model stuck at the majority answer barely flips: its low flip rate must not read as success.
    cat_ood.update(accuracy=0.66, ci_low=0.61, ci_high=0.71, flip_rate=0.01)
    text = findings(results)
    assert "CAT on test_ood (66.0%) is not above the majority-class baseline (66.5%)." in text
    assert any(s.startswith("CAT's flip rate on test_ood says little") for s in text)


def test_attention_nested_as_diagnostics_returns_it(results, tmp_path):
    # cattune.diagnostics.attention_shares nests the shares under "share" and names the sink first_token.
    arms = results["arms"]
    for block, (cause, spurious) in ((arms["baseline"], (0.05, 0.03)), (arms["cat"], (0.2, 0.02))):
        block["attention"] = {"categories": ["cause", "spurious", "first_token", "other"], "rows": 128,
                              "share": {"cause": cause, "spurious": spurious, "first_token": 0.6,
                                        "other": float("nan")},
                              "per_layer": {"cause": [cause] * 3}, "causal_ratio": cause / spurious}
    results["base_model"] = None
    text = findings(results)
    assert any("raised the share of attention on the causes from 5.0% to 20.0%" in s for s in text)
    report = write_report(results, tmp_path)["report"].read_text()
    assert "| attention share on | cause | spurious | first_token | causal ratio |" in report
    assert "| CAT | 20.0% | 2.0% | 60.0% | 10.00 |" in report and "model before training" not in report


def test_single_arm_no_flip_no_optional_parts(results, tmp_path):
    minimal = {"name": "only-baseline", "seeds": [1], "splits": ["test_iid", "test_ood", "test_ood_anticorrelated"],
               "arms": {"baseline": {"splits": {
                   "test_iid": {"accuracy": 0.9, "ci_low": 0.87, "ci_high": 0.93, "n": 400},
                   "test_ood": {"accuracy": 0.7, "n": 400}}}}}
    written = write_report(minimal, tmp_path, metrics={"baseline": [{"step": 1}]}, heatmaps={})
    assert set(written) == {"report", "accuracy"}
    _assert_png(written["accuracy"])
    report = written["report"].read_text()
    assert "Only the baseline arm was run: no comparison is made." in report
    assert "| baseline | 90.0 [87.0, 93.0] | 70.0 |" in report and "flip" not in comparison_table(minimal)
    assert "| majority class | — | — |" in report and "unknown version" in report
    assert "anticorrelated" not in report  # listed but never evaluated: no empty column

    empty = write_report({"name": "nothing-yet"}, tmp_path / "empty")
    assert set(empty) == {"report"} and "No split was evaluated." in empty["report"].read_text()


def test_multi_seed_and_extra_arm(results, tmp_path):
    results["seeds"] = [42, 43]
    results["pooling"] = "paired tests pool items across seeds"
    augment = results["arms"]["augment"] = copy.deepcopy(results["arms"]["baseline"])
    del augment["attention"]
    augment["train"] = {"steps": 300, "final_train_loss": 0.0812}
    augment["splits"]["test_ood"].update(accuracy=0.91, ci_low=0.88, ci_high=0.94, flip_rate=0.028,
                                         flip_ci_low=0.015, flip_ci_high=0.049)
    # Arms other than CAT are paired with the baseline under "<arm>:<split>".
    results["paired"]["augment:test_ood"] = {
        "mcnemar": {"b01": 70, "b10": 7, "p_value": 1.7e-10}, "accuracy_difference": 0.158,
        "diff_ci_low": 0.12, "diff_ci_high": 0.2, "flip_mcnemar": {"b01": 70, "b10": 2, "p_value": 3e-18},
        "seeds_paired": {"n": 2, "mean_difference": 0.158, "t_test_p_value": 0.21},
        "flip_seeds_paired": {"n": 2, "mean_difference": -0.17, "t_test_p_value": 0.04}}
    for arm in results["arms"].values():
        for split, stats in arm["splits"].items():
            stats["ci_method"] = "seeds"
            stats["per_seed"] = {"42": {"accuracy": stats["accuracy"] - 0.01},
                                 "43": {"accuracy": stats["accuracy"] + 0.01}}
            if split == "test_ood":
                stats["per_seed"]["43"]["flip_rate"] = 0.1
    written = write_report(results, tmp_path)
    report = written["report"].read_text()
    assert "2 seeds per arm (42, 43)." in report and "interval across seeds" in report
    assert "| CAT | 43 | 93.2 | 69.8 (flip 10.0) |" in report
    assert "300 steps, mean training loss 0.0812" in report
    table = comparison_table(results).splitlines()
    assert table[4] == "| augment | 93.0 [90.1, 95.1] | 91.0 [88.0, 94.0] | 2.8 [1.5, 4.9] |"
    assert table[7] == "| augment - baseline | +0.0 | +15.8 [+12.0, +20.0], p = 1.7e-10 | -17.0, p = 3.0e-18 |"
    assert "Paired tests: paired tests pool items across seeds." in report
    text = findings(results)
    assert any(s.startswith("augment vs baseline on test_ood: 91.0% vs 75.2%") and s.endswith("augment is better.")
               and "70 items only augment answered correctly" in s and "n = 400 items x 2 seeds; per seed (2 pairs of runs): mean difference +15.8 points, paired t p = 0.21"
               in s for s in text)
    assert any(s.startswith("augment vs baseline flip rate on test_ood") and "augment is better" in s
               and "per seed (2 pairs of runs): paired t p = 0.040" in s for s in text)
    # The attention caveat is about CAT alone: augment winning does not make CAT's behaviour "mixed".
    assert any("behaviour did not follow" in s for s in text)
    # The same difference at both seeds: the t-test is undefined, and the sentence says so.
    results["paired"]["augment:test_ood"]["flip_seeds_paired"]["t_test_p_value"] = None
    assert any(s.startswith("augment vs baseline flip rate on test_ood")
               and "per seed (2 pairs of runs): paired t undefined (the same difference at every seed)" in s
               for s in findings(results))


def test_training_plot_averages_repeated_steps_and_rejects_empty(metrics, tmp_path):
    two_seeds = {arm: rows + rows for arm, rows in metrics.items()}
    _assert_png(plot_attention_over_training(two_seeds, tmp_path / "t.png"))
    with pytest.raises(ValueError, match="no logged"):
        plot_attention_over_training({"cat": [{"step": 1, "epoch": 0.1}]}, tmp_path / "empty.png")


def test_heatmap_tokens_that_look_like_mathtext_are_drawn_literally(heatmaps, tmp_path):
    heatmaps["cat"]["tokens"][4] = r"$\notacommand$"
    _assert_png(plot_heatmaps({"cat": heatmaps["cat"]}, tmp_path / "h.png"))
    heatmaps["cat"]["matrix"] = [[0.1, 0.2]]
    with pytest.raises(ValueError, match="does not match its tokens"):
        plot_heatmaps(heatmaps, tmp_path / "bad.png")


def test_grid_table_and_plot(tmp_path):
    rows = [{"arm": "baseline", "seeds": [1, 2, 3], "iid_mean": 0.93, "iid_sd": 0.01, "ood_mean": 0.752,
             "ood_sd": 0.021, "flip_mean": 0.198, "flip_sd": 0.03},
            {"arm": "cat-hinge", "seeds": 1, "iid_mean": 0.938, "iid_sd": None, "ood_mean": 0.702,
             "ood_sd": None, "flip_mean": None, "flip_sd": None}]
    table = grid_table(rows)
    assert "| baseline | 3 | 93.0 ± 1.0 | 75.2 ± 2.1 | 19.8 ± 3.0 |" in table
    assert "| cat-hinge | 1 | 93.8 | 70.2 | — |" in table
    _assert_png(plot_grid_summary(rows, tmp_path / "grid.png"))
    with pytest.raises(ValueError):
        grid_table([])
    rows[0].update(flip_same_mean=0.05, flip_same_sd=0.01)
    rows[1].update(flip_same_mean=0.20, flip_same_p=0.003)
    table = grid_table(rows)
    assert "| baseline | 3 | 93.0 ± 1.0 | 75.2 ± 2.1 | 19.8 ± 3.0 | 5.0 ± 1.0 | — |" in table
    assert "| cat-hinge | 1 | 93.8 | 70.2 | — | 20.0 | 0.003 |" in table
    assert "keeping each one's number of characters" in table
    _assert_png(plot_grid_summary(rows, tmp_path / "grid-same-length.png"))


def test_report_of_a_grid_has_a_grid_table_and_plot(results, tmp_path):
    from cattune.report import grid_rows

    grid = copy.deepcopy(results)
    grid["arms"]["augment"] = copy.deepcopy(grid["arms"]["cat"])
    grid["arms"]["augment"]["splits"]["test_ood"].update(accuracy=0.91, flip_rate=0.028)
    grid["paired"]["augment:test_ood"] = {"mcnemar": {"b01": 70, "b10": 4, "p_value": 1.7e-10},
                                          "accuracy_difference": 0.158,
                                          "flip_mcnemar": {"b01": 70, "b10": 3, "p_value": 2e-12}}
    for arm in grid["arms"].values():
        for split in arm["splits"].values():
            split["per_seed"] = {"42": {"accuracy": split["accuracy"], **({"flip_rate": split["flip_rate"]}
                                                                          if "flip_rate" in split else {})}}
    grid["arms"]["cat"]["attention"]["path"] = {"share": 0.05, "max_head_share": 0.31}
    rows = {r["arm"]: r for r in grid_rows(grid)}
    assert rows["cat"]["path_share"] == 0.05 and rows["baseline"]["path_share"] is None
    assert rows["augment"]["ood_mean"] == pytest.approx(0.91) and rows["augment"]["flip_mean"] == pytest.approx(0.028)
    assert rows["cat"]["ood_p"] == 0.029 and rows["baseline"].get("ood_p") is None
    assert rows["cat"]["share_cause"] == 0.20 and rows["augment"]["iid_sd"] is None
    written = write_report(grid, tmp_path / "grid")
    report = written["report"].read_text()
    assert "## Grid" in report and "| augment | 1 | 92.2 | 91.0 | 2.8 | 1.7e-10 | 2.0e-12 |" in report
    assert "| 5.0% | 31.0% |" in report and "5.0% / 31.0%" in report  # grid and attention tables
    _assert_png(written["grid"])
    assert "## Flips by change in token count" not in report  # no arm has the breakdown
    grid["arms"]["cat"]["splits"]["test_ood"]["flip_by_token_change"] = {
        "-1": {"n": 4, "flips": 2, "changes": {"High Risk -> Low Risk": 2}, "rate": 0.5},
        "0": {"n": 10, "flips": 0, "changes": {}, "rate": 0.0},
        "+1": {"n": 5, "flips": 3, "changes": {"Low Risk -> High Risk": 3}, "rate": 0.6},
        "+2": {"n": 1, "flips": 1, "changes": {"Low Risk -> High Risk": 1}, "rate": 1.0}}
    report = write_report(grid, tmp_path / "grid2")["report"].read_text()
    assert "| cat | 0.0 (0/10) | 66.7 (4/6); 4 of them Low Risk -> High Risk | 50.0 (2/4); 2 of them High Risk -> Low Risk |" in report
    assert "| baseline |" not in report.split("## Flips by change in token count")[1].split("##")[0]
    # Two arms and one seed: no grid section.
    assert "## Grid" not in write_report(results, tmp_path / "pair")["report"].read_text()


def test_arm_settings_name_every_override():
    from cattune.report.document import _arm_settings

    config = {"train": {"attn_loss_type": "div", "attn_alpha": 2.0, "attn_per_head": False},
              "arms": {"hinge": {"attn_loss_type": "hinge"},
                       "heads": {"attn_loss_type": "hinge", "attn_per_head": True, "attn_sink": False, "lr": 2e-3}}}
    assert _arm_settings(config, "hinge") == "attention term: loss_type hinge, alpha 2.0"
    assert _arm_settings(config, "heads") == ("attention term: loss_type hinge, alpha 2.0; "
                                              "attn_per_head=True; attn_sink=False; lr=0.002")
