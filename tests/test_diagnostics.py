"""Attention shares and row maps against a direct computation from dense eager attention."""

import pytest
import torch

from cattune.data.records import Record, Relation
from cattune.diagnostics import attention_shares, row_attention_map
from cattune.encoding import encode_record
from cattune.masks import span_columns
from tiny_models import tiny_llama, tiny_tokenizer

PROMPT = "Here is the statistical data for a person. Please predict the probability of cancer. "


def stg_record(values, target):
    smoking, weight, exercise, fingers, clothing, hormones, gene, room = values
    fields = [f"Smoking: {smoking}", f"Yellow fingers: {fingers}", f"Weight: {weight}", f"Clothing size: {clothing}",
              f"Exercise: {exercise}", f"Hormones: {hormones}", f"Certain gene: {gene}", f"Room size: {room}"]
    text = PROMPT + ", ".join(fields) + " Answer: "
    causes = (f"Smoking: {smoking}", f"Weight: {weight}", f"Exercise: {exercise}")
    spans = {"spurious": [f"Yellow fingers: {fingers}", f"Clothing size: {clothing}", f"Hormones: {hormones}"],
             "irrelevant": [f"Certain gene: {gene}", f"Room size: {room}"]}
    return Record(input=text, target=target, important=(Relation(target, causes),)), spans


RECORDS = [
    stg_record((8, 4, 2, 12, 4, 1, 3, 7), "High Risk"),
    stg_record((1, 3, 9, 1, 3, 4, 10, 2), "Low Risk"),
    stg_record((5, 10, 5, 7, 10, 2, 6, 6), "High Risk"),
]
UNANNOTATED = Record(input=PROMPT + "Smoking: 3 Answer: ", target="Low Risk", important=())


def dense_reference_shares(model, tokenizer, records, spans):
    """Shares from full eager maps, one example at a time, by the definition (slow and direct)."""
    model.set_attn_implementation("eager")
    per_layer, n_rows = {}, 0
    for record, named in zip(records, spans):
        example = encode_record(tokenizer, record)
        with torch.no_grad():
            maps = model(input_ids=torch.tensor([example.input_ids]), output_attentions=True).attentions
        for row, causes in example.rows.rows.items():
            n_rows += 1
            taken = set(causes)
            groups = {"cause": set(causes)}
            for name, values in named.items():
                cols = {j for j in span_columns(example.text, example.offsets, values) if j <= row} - taken
                groups[name] = cols
                taken |= cols
            groups["first_token"] = set() if 0 in taken else {0}
            taken.add(0)
            groups["other"] = set(range(row + 1)) - taken
            for name, cols in groups.items():
                for layer, layer_map in enumerate(maps):
                    share = sum(float(layer_map[0, :, row, j].mean()) for j in cols)
                    per_layer.setdefault(name, [0.0] * len(maps))[layer] += share
    model.set_attn_implementation("sdpa")
    return {name: [v / n_rows for v in values] for name, values in per_layer.items()}


@pytest.mark.parametrize("backend", ["recompute", "eager"])
def test_shares_match_the_dense_definition(backend):
    model, tokenizer = tiny_llama(), tiny_tokenizer()
    records, spans = [r for r, _ in RECORDS], [s for _, s in RECORDS]
    result = attention_shares(model, tokenizer, records, spans, backend=backend, batch_size=2)
    expected = dense_reference_shares(model, tokenizer, records, spans)
    assert result["categories"] == ["cause", "spurious", "irrelevant", "first_token", "other"]
    assert result["rows"] == sum(len(encode_record(tokenizer, r).rows) for r in records) > 0
    assert result["layers"] == [0, 1]
    for name in result["categories"]:
        assert result["per_layer"][name] == pytest.approx(expected[name], abs=1e-5)
        assert result["share"][name] == pytest.approx(sum(expected[name]) / 2, abs=1e-5)
    assert result["share"]["spurious"] > 0 and result["share"]["irrelevant"] > 0
    totals = [sum(result["per_layer"][name][layer] for name in result["categories"]) for layer in range(2)]
    assert totals == pytest.approx([1.0, 1.0], abs=1e-5)
    assert result["causal_ratio"] > 0


def test_batching_does_not_change_the_shares_and_state_is_restored():
    model, tokenizer = tiny_llama().train(), tiny_tokenizer()
    records = [r for r, _ in RECORDS] + [UNANNOTATED]
    spans = [s for _, s in RECORDS] + [{"spurious": [], "irrelevant": []}]
    one = attention_shares(model, tokenizer, records, spans, batch_size=1)
    many = attention_shares(model, tokenizer, records, spans, batch_size=4)
    for name in one["categories"]:
        assert one["per_layer"][name] == pytest.approx(many["per_layer"][name], abs=1e-6)
    assert one["records"] == 4 and one["records_without_rows"] == 1
    assert model.training and model.config._attn_implementation == "sdpa"


def test_last_layer_only():
    model, tokenizer = tiny_llama(), tiny_tokenizer()
    records, spans = [r for r, _ in RECORDS], [s for _, s in RECORDS]
    full = attention_shares(model, tokenizer, records, spans)
    last = attention_shares(model, tokenizer, records, spans, layers=[-1])
    assert last["layers"] == [1]
    assert last["per_layer"]["cause"] == pytest.approx(full["per_layer"]["cause"][1:], abs=1e-6)


def test_bad_column_spans_are_refused():
    model, tokenizer = tiny_llama(), tiny_tokenizer()
    records = [r for r, _ in RECORDS[:2]]
    with pytest.raises(ValueError, match="entries"):
        attention_shares(model, tokenizer, records, [{"spurious": []}])
    with pytest.raises(ValueError, match="names column sets"):
        attention_shares(model, tokenizer, records, [{"spurious": []}, {"noise": []}])
    with pytest.raises(ValueError, match="must differ"):
        attention_shares(model, tokenizer, records, [{"other": []}, {"other": []}])


def test_row_attention_map_matches_dense_eager_rows():
    model, tokenizer = tiny_llama(), tiny_tokenizer()
    record = RECORDS[0][0]
    tokens, rows, matrix = row_attention_map(model, tokenizer, record)
    example = encode_record(tokenizer, record)
    assert rows == sorted(example.rows.rows) and len(tokens) == len(example.input_ids)
    assert "".join(tokens[:-1]) == record.text
    model.set_attn_implementation("eager")
    with torch.no_grad():
        maps = model(input_ids=torch.tensor([example.input_ids]), output_attentions=True).attentions
    dense = torch.stack(maps).mean(dim=(0, 2))[0]  # [T, T]
    torch.testing.assert_close(matrix, dense[rows], atol=1e-6, rtol=1e-5)
    chosen_tokens, chosen_rows, chosen = row_attention_map(model, tokenizer, record, rows=[3, 1], backend="eager")
    assert chosen_rows == [1, 3]
    torch.testing.assert_close(chosen, dense[[1, 3]], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="no supervised rows"):
        row_attention_map(model, tokenizer, UNANNOTATED)


def test_path_attention_matches_the_dense_definition():
    from cattune.collator import path_positions
    from cattune.diagnostics import path_attention

    model, tokenizer = tiny_llama(), tiny_tokenizer()
    records, spans = [r for r, _ in RECORDS], [s for _, s in RECORDS]
    result = path_attention(model, tokenizer, records, spans, batch_size=2)
    model.set_attn_implementation("eager")
    mean_sum = max_sum = 0.0
    n_rows = 0
    for record, named in zip(records, spans):
        example = encode_record(tokenizer, record)
        columns = {name: span_columns(example.text, example.offsets, values) for name, values in named.items()}
        inside = set().union(*map(set, columns.values()))
        with torch.no_grad():
            maps = model(input_ids=torch.tensor([example.input_ids]), output_attentions=True).attentions
        for row in path_positions(columns, len(example.input_ids)):
            n_rows += 1
            for layer_map in maps:
                per_head = sum(layer_map[0, :, row, j] for j in inside if j <= row)  # [H]
                mean_sum += float(per_head.mean()) / len(maps)
                max_sum += float(per_head.max()) / len(maps)
    model.set_attn_implementation("sdpa")
    assert result["rows"] == n_rows > 0 and result["records"] == 3
    assert result["share"] == pytest.approx(mean_sum / n_rows, abs=1e-5)
    assert result["max_head_share"] == pytest.approx(max_sum / n_rows, abs=1e-5)
    assert result["max_head_share"] > result["share"] > 0
