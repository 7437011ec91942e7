"""Comparing two annotations of the same items."""

import json

import pytest

from cattune.annotate.compare import align, compare_annotations, format_comparison
from cattune.cli.main import main
from cattune.data.records import parse_record
from tiny_models import save_tiny, tiny_tokenizer

TEXT = "Ruth starts with 89 apples. She shares 5 with Peter. How many apples does Ruth end with? Answer: "


def _rec(important, text=TEXT, target="84"):
    return parse_record({"input": text, "target": target, "important": important})


def test_pair_span_and_jaccard_agreement():
    a = [_rec([{"84": ["89 apples", "5"]}, {"How many apples": ["Ruth"]}])]
    b = [_rec([{"84": ["89 Apples", "5", "Peter"]}, {"How  many apples": ["Ruth"]}, {"Answer": ["missing span"]}])]
    report = compare_annotations(a, b)
    agr = report.agreement
    # A: (84,89 apples) (84,5) (How many apples,Ruth); B adds case/space variants, Peter and a bad span.
    assert (agr["pairs_exact"].matched, agr["pairs_exact"].in_a, agr["pairs_exact"].in_b) == (1, 3, 5)
    assert agr["pairs_normalised"].matched == 3
    assert agr["pairs_normalised"].precision == pytest.approx(3 / 5) and agr["pairs_normalised"].recall == 1.0
    assert agr["effects_exact"].matched == 1 and agr["effects_normalised"].matched == 2
    assert report.jaccard_mean == pytest.approx(3 / 5)
    # Validation per side: B's "89 Apples", "How  many apples" and "missing span" cannot be placed.
    assert report.a.spans_dropped == 0 and report.b.spans_dropped > 0
    assert report.b.dropped_by_reason["not_in_text"] == 3
    assert "token_rows" not in agr


def test_alignment_by_input_and_target_when_orders_differ():
    x, y, z = (_rec([{"84": ["5"]}], text=f"Item {i}: {TEXT}") for i in range(3))
    pairs, only_a, only_b = align([x, y, z], [z, x])
    assert [(p[0].input, p[1].input) for p in pairs] == [(x.input, x.input), (z.input, z.input)]
    assert (only_a, only_b) == (1, 0)


def test_supervised_rows_per_tokenizer():
    a = [_rec([{"84": ["89 apples", "5"]}])]
    b = [_rec([{"84": ["89 apples"]}, {"How many apples": ["Ruth starts"]}])]
    report = compare_annotations(a, b, tokenizer=tiny_tokenizer(), tokenizer_name="tiny")
    assert report.a.rows_per_item[0] >= 1 and report.b.rows_per_item[0] > report.a.rows_per_item[0]
    rows = report.agreement["token_rows"]
    assert rows.matched == report.a.rows_per_item[0] and rows.recall == 1.0  # B supervises every row A does
    assert report.agreement["token_cells"].matched < report.agreement["token_cells"].in_a  # but not the "5" columns
    text = format_comparison(report)
    assert "supervised rows per item, mean" in text and "token_cells" in text


def test_compare_cli_on_the_released_mawps_annotations(release_dir, tmp_path, capsys):
    tok_dir = save_tiny(tmp_path)
    a, b = release_dir / "MAWPS" / "mawps_train.jsonl", release_dir / "MAWPS" / "mawps_train_gpt4o.jsonl"
    report_path = tmp_path / "cmp.json"
    assert main(["annotate", "--compare", str(a), str(b), "--tokenizer", str(tok_dir), "--report", str(report_path)]) == 0
    printed = capsys.readouterr().out
    assert "items compared: 1239 (only in A: 0, only in B: 0)" in printed
    report = json.loads(report_path.read_text())
    # Tokenizer-independent numbers, as recorded in docs/ANNOTATE.md.
    assert report["agreement"]["pairs_exact"] == {"matched": 3268, "in_a": 12561, "in_b": 12705,
                                                  "precision": 0.2572, "recall": 0.2602, "f1": 0.2587}
    assert report["a"]["items_with_relations"] == 1184 and report["b"]["items_with_relations"] == 1239
    assert len(report["per_item"]) == 1239 and "rows_a" in report["per_item"][0]
    assert report["a"]["supervised_rows"]["total"] > 0
