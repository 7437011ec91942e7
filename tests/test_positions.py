"""Position jitter: random gaps in training position ids (cattune.positions)."""

import pytest
import torch

from cattune.positions import jittered_position_ids
from cattune.training import train
from test_training import _cfg, _metrics, stg_file, tiny_dir  # noqa: F401  (fixtures)
from tiny_models import tiny_llama


def test_ids_are_the_default_plus_at_most_max_gaps_unit_steps():
    torch.manual_seed(0)
    ids = torch.zeros(4000, 30, dtype=torch.long)
    pos = jittered_position_ids(ids, 3)
    steps = pos.diff(dim=-1)
    assert (pos[:, 0] == 0).all() and (steps >= 1).all()  # strictly increasing from 0
    total = pos[:, -1] - 29
    assert set(total.tolist()) == {0, 1, 2, 3}  # 0..3 gaps (two may land on one position)
    # Without gaps the model's default ids; a zero-gap draw happens, so evaluation is in distribution.
    assert (total == 0).float().mean() > 0.2
    assert torch.equal(jittered_position_ids(ids[:2], 0), torch.arange(30).expand(2, 30))
    # Gaps fall anywhere after the first token.
    assert set((steps > 1).nonzero()[:, 1].tolist()) == set(range(29))


def test_a_model_reads_across_the_gaps():
    model = tiny_llama(seed=1).eval()
    torch.manual_seed(0)
    ids = torch.randint(3, 100, (2, 12))
    mask = torch.ones_like(ids)
    plain = model(input_ids=ids, attention_mask=mask).logits
    default = model(input_ids=ids, attention_mask=mask, position_ids=torch.arange(12).expand(2, 12)).logits
    torch.testing.assert_close(plain, default)
    gapped_ids = torch.tensor([[0, 1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 13]] * 2)
    gapped = model(input_ids=ids, attention_mask=mask, position_ids=gapped_ids).logits
    assert not torch.allclose(gapped[:, -1], plain[:, -1])  # the ids are used
    torch.testing.assert_close(gapped[:, :3], plain[:, :3])  # before the first gap nothing changes
    # Still one causal sequence (not split into packed pieces at the gaps): the last position
    # sees the first token.
    other = ids.clone()
    other[:, 0] = (other[:, 0] + 1) % 100
    moved = model(input_ids=other, attention_mask=mask, position_ids=gapped_ids).logits
    assert not torch.allclose(moved[:, -1], gapped[:, -1])


def test_training_with_jitter_passes_jittered_ids(tiny_dir, stg_file, tmp_path, monkeypatch):  # noqa: F811
    import cattune.trainer as trainer_module

    drawn = []

    def spy(input_ids, max_gaps, **kw):
        drawn.append(max_gaps)
        return jittered_position_ids(input_ids, max_gaps, **kw)

    monkeypatch.setattr(trainer_module, "jittered_position_ids", spy)
    result = train(_cfg(tiny_dir, stg_file, tmp_path / "jitter", max_steps=3, position_jitter=4))
    assert drawn == [4, 4, 4] and result.global_step == 3
    assert all(r["lm_loss"] > 0 for r in _metrics(result.output_dir) if "lm_loss" in r)
    drawn.clear()
    train(_cfg(tiny_dir, stg_file, tmp_path / "plain", max_steps=2))
    assert drawn == []


def test_negative_jitter_is_refused(tiny_dir, stg_file, tmp_path):  # noqa: F811
    from cattune.config import ConfigError

    with pytest.raises(ConfigError, match="position_jitter"):
        train(_cfg(tiny_dir, stg_file, tmp_path / "bad", max_steps=1, position_jitter=-1))
