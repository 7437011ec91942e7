"""The study's variants of the term: per-layer/per-head thresholds, the attention sink left out, the
path constraint, and the counterfactual-augmentation comparator."""

import pytest
import torch

from cattune.attention import RowSupervision, row_masses
from cattune.augment import PerEpochExamples, SelectEpoch, counterfactual_records, epochs_needed
from cattune.collator import CATCollator, build_examples, path_positions
from cattune.config import ConfigError
from cattune.data import stg
from cattune.data.records import parse_record, write_records
from cattune.data.tables import parse_table
from cattune.loss import reattention_loss
from cattune.training import train
from test_loss import random_batch
from test_training import _cfg, _metrics, stg_file, tiny_dir  # noqa: F401  (fixtures)
from tiny_models import tiny_tokenizer


def _masses(attention, cause, noncausal, key_valid):
    supervised = (cause.any(-1) | noncausal.any(-1)).nonzero()
    index = {tuple(r): k for k, r in enumerate(supervised.tolist())}
    sets = {name: torch.tensor([(index[(b, i)], j) for b, i, j in m.nonzero().tolist() if (b, i) in index],
                               dtype=torch.long).reshape(-1, 2) for name, m in (("cause", cause), ("spurious", noncausal))}
    sup = RowSupervision(supervised, sets)
    per_layer = [attention[layer][sup.rows[:, 0], :, sup.rows[:, 1], :] for layer in range(attention.shape[0])]
    return sup, row_masses(per_layer, sup, key_valid, first_token=True)


def _literal(attention, key_valid, b, i, layer, head, columns, *, sink=True):
    """Mean probability over ``columns`` and over the other allowed columns, literally."""
    allowed = [j for j in range(i + 1) if key_valid[b, j]] if key_valid[b, i] else []  # a padding row has none
    inside = [j for j in allowed if j in columns]
    outside = [j for j in allowed if j not in columns and (sink or j != 0)]
    p = attention[layer, b, head, i]
    mean = lambda cols: (sum(p[j] for j in cols) / len(cols)) if cols else None  # noqa: E731
    return mean(inside), mean(outside)


@pytest.mark.parametrize("sink", [True, False])
def test_per_layer_and_per_head_statistics_match_a_literal_computation(sink):
    attention, cause, key_valid = random_batch(5, layers=3, batch=2, heads=2, length=8)
    noncausal = torch.zeros_like(cause)
    sup, masses = _masses(attention, cause, noncausal, key_valid)
    causal, other, n_c, n_o = masses.row_statistics(per_head=True, per_layer=True, sink=sink)
    assert causal.shape == (len(sup.rows), 3 * 2)
    for r, (b, i) in enumerate(sup.rows.tolist()):
        columns = {j for (rr, j) in sup.column_sets["cause"].tolist() if rr == r}
        for layer in range(3):
            for head in range(2):
                a_c, a_n = _literal(attention, key_valid, b, i, layer, head, columns, sink=sink)
                k = layer * 2 + head
                if a_c is None or a_n is None:
                    continue
                assert (causal[r, k] / n_c[r]).item() == pytest.approx(a_c.item(), abs=1e-9)
                assert (other[r, k] / n_o[r]).item() == pytest.approx(a_n.item(), abs=1e-9)
    # The layer-only reduction is the head mean of the layer-head one.
    by_layer = masses.row_statistics(per_layer=True, sink=sink)[0]
    torch.testing.assert_close(by_layer, causal.reshape(-1, 3, 2).mean(-1))
    # Leaving the sink out changes the other side only where the first token is an allowed non-cause.
    with_sink = masses.row_statistics(sink=True)
    without = masses.row_statistics(sink=False)
    torch.testing.assert_close(with_sink[0], without[0])
    assert bool((without[3] == with_sink[3] - 1).any()) or not sink


def test_path_statistics_match_a_literal_computation():
    attention, cause, key_valid = random_batch(7, layers=2, batch=2, heads=3, length=10)
    noncausal = torch.zeros_like(cause)
    for b in range(2):  # spurious columns 1-2 for every row after them
        noncausal[b, 3:, 1:3] = True
    sup, masses = _masses(attention, cause, noncausal, key_valid)
    rest, named, n_rest, n_named = masses.path_statistics(["spurious"], per_head=True)
    for r, (b, i) in enumerate(sup.rows.tolist()):
        if not key_valid[b, i] or i < 3:
            continue
        for head in range(3):
            a_named = sum(_literal(attention, key_valid, b, i, layer, head, {1, 2})[0] for layer in range(2)) / 2
            a_rest = sum(_literal(attention, key_valid, b, i, layer, head, {1, 2})[1] for layer in range(2)) / 2
            assert (named[r, head] / n_named[r]).item() == pytest.approx(a_named.item(), abs=1e-9)
            assert (rest[r, head] / n_rest[r]).item() == pytest.approx(a_rest.item(), abs=1e-9)
    out = reattention_loss(rest, named, n_rest, n_named, alpha=2.0, loss_type="hinge")
    assert torch.isfinite(out.loss)


def test_path_rows_and_their_masks_in_a_batch():
    assert path_positions({"spurious": [4, 5], "irrelevant": [9]}, 12) == [6, 7, 8, 10, 11]
    assert path_positions({}, 12) == []
    tok = tiny_tokenizer()
    records = [parse_record(obj) for obj in stg.generate_splits(1, 2, 1)["train"]]
    data = build_examples(records, tok, max_length=96, path_rows=True)
    batch = CATCollator(tok.pad_token_id)(data.examples)
    answer, path = batch["cat_answer_rows"], batch["cat_path_rows"]
    assert answer.shape == path.shape == (len(batch["cat_rows"]),)
    n_answer = sum(len(e["cat_rows"]) for e in data.examples)
    assert int(answer.sum()) == n_answer and int(path.sum()) == sum(len(e["cat_path_rows"]) for e in data.examples)
    # Cause pairs only on answer rows; every path row sees at least one spurious column.
    cause_rows = set(batch["cat_pairs_cause"][:, 0].tolist())
    assert cause_rows <= set(answer.nonzero().flatten().tolist())
    spurious_rows = set(batch["cat_pairs_spurious"][:, 0].tolist()) | set(batch["cat_pairs_irrelevant"][:, 0].tolist())
    assert set(path.nonzero().flatten().tolist()) <= spurious_rows
    # Without path rows the batch is what it always was.
    plain = CATCollator(tok.pad_token_id)(build_examples(records, tok, max_length=96).examples)
    assert "cat_path_rows" not in plain and len(plain["cat_rows"]) == n_answer


def test_path_term_lowers_attention_on_noncausal_spans(tiny_dir, stg_file, tmp_path):  # noqa: F811
    common = dict(max_steps=12, attn_weight=0.0, path_alpha=50.0, path_loss_type="hinge")
    on = train(_cfg(tiny_dir, stg_file, tmp_path / "on", path_weight=1.0, **common))
    control = train(_cfg(tiny_dir, stg_file, tmp_path / "control", path_weight=1e-9, **common))
    s_on = [r["path_share_noncausal"] for r in _metrics(on.output_dir) if "path_share_noncausal" in r]
    s_ctl = [r["path_share_noncausal"] for r in _metrics(control.output_dir) if "path_share_noncausal" in r]
    assert len(s_on) == len(s_ctl) == 12 and s_on[0] == pytest.approx(s_ctl[0], rel=1e-4)
    assert s_on[-1] < 0.7 * s_ctl[-1]
    assert all("path_loss" in r for r in _metrics(on.output_dir) if "lm_loss" in r)


def test_path_term_waits_for_its_start_epoch(tiny_dir, stg_file, tmp_path):  # noqa: F811
    # 64 records in batches of 8: epoch 0 is steps 1-8.
    common = dict(epochs=2, attn_weight=0.0, path_alpha=50.0, path_loss_type="hinge")
    late = _metrics(train(_cfg(tiny_dir, stg_file, tmp_path / "late", path_weight=1.0, path_start_epoch=1,
                               **common)).output_dir)
    off = _metrics(train(_cfg(tiny_dir, stg_file, tmp_path / "off", path_weight=1e-9, **common)).output_dir)
    late, off = ([r for r in rows if "lm_loss" in r] for rows in (late, off))
    assert [r["path_weight"] for r in late] == [0.0] * 8 + [1.0] * 8
    # Off means off: up to the first step of epoch 1 (whose forward precedes its update) the run is
    # the run without the term; from then on every step attends less to the named spans.
    share = [r["path_share_noncausal"] for r in late], [r["path_share_noncausal"] for r in off]
    assert [r["lm_loss"] for r in late[:9]] == pytest.approx([r["lm_loss"] for r in off[:9]], rel=1e-5)
    assert share[0][:9] == pytest.approx(share[1][:9], rel=1e-5)
    assert all(a < b for a, b in zip(share[0][9:], share[1][9:]))


def test_path_term_needs_named_spans(tiny_dir, tmp_path):  # noqa: F811
    bare = [{k: v for k, v in obj.items() if k != "noncausal"} for obj in stg.generate_splits(2, 8, 1)["train"]]
    path = write_records(tmp_path / "bare.jsonl", bare)
    with pytest.raises(ConfigError, match="noncausal"):
        train(_cfg(tiny_dir, path, tmp_path / "run", max_steps=1, path_weight=1.0))


def test_counterfactual_records_keep_causes_and_label():
    records = [parse_record(obj) for obj in stg.generate_splits(3, 20, 1)["train"]]
    a = counterfactual_records(records, "stg", seed=1, epoch=0)
    assert a == counterfactual_records(records, "stg", seed=1, epoch=0)  # deterministic
    b = counterfactual_records(records, "stg", seed=1, epoch=1)
    assert [r.input for r in a] != [r.input for r in b]
    changed = 0
    for old, new in zip(records, a):
        (old_rel,), noncausal = stg.spans(new.input, new.target)
        assert new.target == old.target and new.important == old.important
        assert old_rel.causes == stg.spans(old.input, old.target)[0][0].causes  # causes untouched
        assert new.extra["noncausal"] == noncausal  # spans follow the new values
        changed += new.input != old.input
    assert changed >= 18


def test_epochs_needed():
    assert epochs_needed(100, epochs=3, max_steps=-1, batch_size=16, grad_accum=1) == 3
    assert epochs_needed(100, epochs=2.5, max_steps=-1, batch_size=16, grad_accum=1) == 3
    assert epochs_needed(100, epochs=1, max_steps=15, batch_size=16, grad_accum=1) == 3  # 7 steps per epoch


def test_augmented_training_sees_a_new_redraw_each_epoch(tiny_dir, stg_file, tmp_path, monkeypatch):  # noqa: F811
    import cattune.training as training

    seen: list[list[list[int]]] = []

    class Recording(CATCollator):
        def __call__(self, features):
            seen.append([list(f["input_ids"]) for f in features])
            return super().__call__(features)

    monkeypatch.setattr(training, "CATCollator", Recording)
    # 64 records, batch 8: 8 steps per epoch, 16 steps = 2 epochs.
    result = train(_cfg(tiny_dir, stg_file, tmp_path / "aug", max_steps=16, attn_weight=0.0, augment="stg"))
    assert result.global_step == 16
    tok = tiny_tokenizer()
    texts = [[tok.decode(ids) for ids in batch] for batch in seen]
    epoch0 = {t for batch in texts[:8] for t in batch}
    epoch1 = {t for batch in texts[8:16] for t in batch}
    assert len(epoch0) == len(epoch1) == 64 and len(epoch0 & epoch1) < 8


def test_select_epoch_follows_the_trainer_state():
    ds = PerEpochExamples([[{"x": 0}], [{"x": 1}], [{"x": 2}]])
    cb = SelectEpoch(ds)

    class State:
        epoch = 1.37  # resumed mid-epoch 1

    cb.on_epoch_begin(None, State(), None)
    assert ds[0] == {"x": 1}
    State.epoch = 5.0
    cb.on_epoch_begin(None, State(), None)
    assert ds[0] == {"x": 2}  # more epochs than copies: cycle
    with pytest.raises(ValueError):
        PerEpochExamples([[{"x": 0}], []])


def test_training_without_the_sink_and_per_layer(tiny_dir, stg_file, tmp_path):  # noqa: F811
    with_sink = train(_cfg(tiny_dir, stg_file, tmp_path / "sink", max_steps=2))
    without = train(_cfg(tiny_dir, stg_file, tmp_path / "nosink", max_steps=2, attn_sink=False, attn_per_layer=True))
    first = [r for r in _metrics(with_sink.output_dir) if "attn_loss" in r][0]
    other = [r for r in _metrics(without.output_dir) if "attn_loss" in r][0]
    assert first["lm_loss"] == pytest.approx(other["lm_loss"], rel=1e-5)  # same model, same first batch
    # A near-uniform tiny model changes little, but the ratio must be computed differently.
    assert abs(first["attn_ratio"] - other["attn_ratio"]) > 1e-6


def test_path_term_with_augmentation_follows_the_redrawn_values(tiny_dir, stg_file, tmp_path, monkeypatch):  # noqa: F811
    import cattune.training as training

    seen: list[dict] = []

    class Recording(CATCollator):
        def __call__(self, features):
            seen.extend(features)
            return super().__call__(features)

    monkeypatch.setattr(training, "CATCollator", Recording)
    result = train(_cfg(tiny_dir, stg_file, tmp_path / "aug-path", max_steps=16, path_weight=1.0, augment="stg"))
    assert result.global_step == 16 and all("path_loss" in r for r in _metrics(result.output_dir) if "lm_loss" in r)
    tok = tiny_tokenizer()
    # In every redrawn example the spurious columns spell that redraw's spurious pairs, in prompt order.
    for example in seen[:80]:
        text = tok.decode(example["input_ids"])
        named = tok.decode([example["input_ids"][j] for j in example["cat_named_columns"]["spurious"]])
        pairs = sorted((text.index(f"{name}: "), f"{name}: {value}") for name, value in
                       ((f.name, f.value) for f in parse_table(text)) if name in stg.SPURIOUS)
        assert named.split() == " ".join(pair for _, pair in pairs).split()
