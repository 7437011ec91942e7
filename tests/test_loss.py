"""The vectorised Re-Attention loss against a slow reference that follows the released semantics."""

import math

import pytest
import torch

from cattune.attention import RowSupervision, row_masses
from cattune.loss import LOSS_TYPES, attention_ratio, attention_weight, held_ratio, reattention_loss


def reference_row_loss(a_c, a_n, alpha, loss_type):
    r = a_c / a_n
    if r >= alpha:
        return a_c * 0.0
    if loss_type == "div":
        return -torch.log(1 + a_c) / torch.log(1 + a_n)
    if loss_type == "div2":
        return -torch.log(1 + a_c / (1 + a_n))
    if loss_type == "nll":
        return -a_c / (a_c + a_n)
    return alpha - r


def reference_loss(attention, cause, key_valid, *, alpha, loss_type):
    """The released per-row loop over dense attention.

    attention: [L, B, H, T, T] softmax probabilities; cause: [B, T, T] bool (the method's matrix);
    key_valid: [B, T] bool. A = mean over layers and heads; a row is valid with >= 1 cause column
    and >= 1 other allowed column (j <= i, not padding); the mean runs over all valid rows.
    """
    mean_attention = attention.mean(dim=(0, 2))  # [B, T, T]
    batch, length = cause.shape[:2]
    total, n_valid = mean_attention.sum() * 0.0, 0
    for b in range(batch):
        for i in range(length):
            if not key_valid[b, i]:
                continue
            allowed = [j for j in range(i + 1) if key_valid[b, j]]
            causes = [j for j in allowed if cause[b, i, j]]
            others = [j for j in allowed if not cause[b, i, j]]
            if not causes or not others:
                continue
            a_c = torch.stack([mean_attention[b, i, j] for j in causes]).mean()
            a_n = torch.stack([mean_attention[b, i, j] for j in others]).mean()
            total = total + reference_row_loss(a_c, a_n, alpha, loss_type)
            n_valid += 1
    return total / n_valid if n_valid else total


def random_batch(seed, *, layers, batch, heads, length, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(layers, batch, heads, length, length, generator=gen, dtype=dtype) * 2
    key_valid = torch.ones(batch, length, dtype=torch.bool)
    for b in range(batch):  # right padding of random length
        key_valid[b, length - int(torch.randint(0, length // 2, (1,), generator=gen)):] = False
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool))
    allowed = causal[None, None, None] & key_valid[None, :, None, None, :]
    logits = logits.masked_fill(~allowed, float("-inf"))
    attention = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # padding rows: all zero
    cause = torch.zeros(batch, length, length, dtype=torch.bool)
    for b in range(batch):  # a few supervised rows per example, a few cause columns each
        for i in torch.randperm(length, generator=gen)[:3].tolist():
            cols = torch.randint(0, length, (int(torch.randint(1, 5, (1,), generator=gen)),), generator=gen)
            cause[b, i, cols] = True  # may include j > i or padding: those must be ignored
    return attention.requires_grad_(True), cause, key_valid


def vectorised_loss(attention, cause, key_valid, *, alpha, loss_type, per_head=False):
    """Our path: supervised rows -> per-layer row probabilities -> masses -> loss."""
    supervised = cause.any(-1).nonzero()  # [R, 2] (b, i)
    index = {tuple(r): k for k, r in enumerate(supervised.tolist())}
    pairs = [(index[(b, i)], j) for b, i, j in cause.nonzero().tolist()]
    sup = RowSupervision(supervised, {"cause": torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)})
    rows = sup.rows
    per_layer = [attention[layer][rows[:, 0], :, rows[:, 1], :] for layer in range(attention.shape[0])]
    masses = row_masses(per_layer, sup, key_valid)
    return reattention_loss(*masses.row_statistics(per_head=per_head), alpha=alpha, loss_type=loss_type)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("seed", range(4))
def test_matches_released_reference_loss_and_gradient(loss_type, seed):
    shapes = [dict(layers=1, batch=1, heads=1, length=5), dict(layers=2, batch=3, heads=4, length=9),
              dict(layers=3, batch=2, heads=2, length=16), dict(layers=2, batch=4, heads=3, length=7)][seed]
    attention, cause, key_valid = random_batch(seed, **shapes)
    for alpha in (0.5, 2.0, 5.0):
        ours = vectorised_loss(attention, cause, key_valid, alpha=alpha, loss_type=loss_type)
        ref = reference_loss(attention, cause, key_valid, alpha=alpha, loss_type=loss_type)
        assert ours.loss.dtype == torch.float64
        assert ours.loss.item() == pytest.approx(ref.item(), abs=1e-6)
        (g_ours,) = torch.autograd.grad(ours.loss, attention, allow_unused=True)
        (g_ref,) = torch.autograd.grad(ref, attention, allow_unused=True)
        g_ours = torch.zeros_like(attention) if g_ours is None else g_ours
        g_ref = torch.zeros_like(attention) if g_ref is None else g_ref
        torch.testing.assert_close(g_ours, g_ref, atol=1e-6, rtol=1e-6)


def test_batches_with_and_without_active_rows_are_covered():
    # Guards the reference test against vacuity: the random batches exercise both branches.
    attention, cause, key_valid = random_batch(0, layers=3, batch=2, heads=2, length=16)
    out = vectorised_loss(attention, cause, key_valid, alpha=1.0, loss_type="hinge")
    assert 0.0 < out.satisfied_fraction < 1.0
    assert out.loss.item() > 0


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_per_head_mode_holds_each_head_to_the_threshold(loss_type):
    gen = torch.Generator().manual_seed(7)
    rows, heads = 6, 3
    causal = torch.rand(rows, heads, generator=gen, dtype=torch.float64)
    other = torch.rand(rows, heads, generator=gen, dtype=torch.float64)
    n_causal = torch.tensor([1, 2, 0, 3, 1, 2])
    n_other = torch.tensor([4, 1, 5, 0, 2, 6])
    out = reattention_loss(causal, other, n_causal, n_other, alpha=2.0, loss_type=loss_type)
    losses, valid = [], 0
    for r in range(rows):
        for h in range(heads):
            if n_causal[r] >= 1 and n_other[r] >= 1:
                a_c, a_n = causal[r, h] / n_causal[r], other[r, h] / n_other[r]
                losses.append(reference_row_loss(a_c, a_n, 2.0, loss_type))
                valid += 1
    assert out.valid.shape == (rows, heads) and int(out.valid.sum()) == valid
    assert out.loss.item() == pytest.approx(float(sum(losses)) / valid, abs=1e-12)
    assert torch.isnan(out.ratio[2]).all() and torch.isnan(out.ratio[3]).all()


def test_no_supervised_rows_gives_zero_with_a_gradient_path():
    causal = torch.zeros(0, requires_grad=True)
    out = reattention_loss(causal, torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                           alpha=2.0, loss_type="div")
    assert out.loss.item() == 0.0 and math.isnan(out.satisfied_fraction)
    out.loss.backward()
    assert causal.grad is not None and causal.grad.numel() == 0


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_rows_without_valid_columns_give_zero_and_finite_gradient(loss_type):
    causal = torch.tensor([0.3, 0.0, 0.7], requires_grad=True)
    other = torch.tensor([0.7, 1.0, 0.0], requires_grad=True)
    out = reattention_loss(causal, other, torch.tensor([2, 0, 3]), torch.tensor([0, 4, 0]),
                           alpha=2.0, loss_type=loss_type)
    assert out.loss.item() == 0.0 and not out.valid.any()
    out.loss.backward()
    assert torch.equal(causal.grad, torch.zeros(3)) and torch.equal(other.grad, torch.zeros(3))


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_underflowing_attention_gives_finite_loss_and_gradient(loss_type):
    # Row 0: the cause columns' probabilities underflow to exactly 0; row 1: the other columns' do.
    logits = torch.tensor([[-1e4, -1e4, 0.0, 0.5], [3.0, 2.0, -1e4, -1e4]], requires_grad=True)
    probs = torch.softmax(logits, -1)
    assert probs[0, :2].sum() == 0 and probs[1, 2:].sum() == 0
    causal, other = probs[:, :2].sum(-1), probs[:, 2:].sum(-1)
    out = reattention_loss(causal, other, torch.tensor([2, 2]), torch.tensor([2, 2]), alpha=2.0, loss_type=loss_type)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(logits.grad).all()
    assert out.ratio[0].item() == 0.0 and out.ratio[1].item() > 2.0  # finite although a_n == 0
    assert out.satisfied_fraction == 0.5


def test_exactly_zero_masses_are_finite():
    causal = torch.zeros(2, requires_grad=True)
    other = torch.zeros(2, requires_grad=True)
    for loss_type in LOSS_TYPES:
        out = reattention_loss(causal, other, torch.tensor([1, 1]), torch.tensor([1, 1]),
                               alpha=2.0, loss_type=loss_type)
        grads = torch.autograd.grad(out.loss, (causal, other))
        assert torch.isfinite(out.loss) and all(torch.isfinite(g).all() for g in grads)


def test_low_precision_inputs_are_computed_in_fp32():
    causal = torch.tensor([0.1, 0.6], dtype=torch.bfloat16)
    out = reattention_loss(causal, causal.flip(0), torch.tensor([1, 1]), torch.tensor([3, 3]),
                           alpha=2.0, loss_type="div")
    assert out.loss.dtype == torch.float32


def test_satisfied_rows_stay_in_the_denominator():
    # One row below alpha (hinge loss 2 - 0.5 = 1.5) and one above: the mean is over both.
    out = reattention_loss(torch.tensor([0.5, 4.0]), torch.tensor([1.0, 1.0]), torch.tensor([1, 1]),
                           torch.tensor([1, 1]), alpha=2.0, loss_type="hinge")
    assert out.loss.item() == pytest.approx(0.75)
    assert out.satisfied_fraction == 0.5
    assert out.mean_ratio == pytest.approx(2.25)


def test_attention_ratio_is_the_ratio_the_loss_thresholds():
    causal, other = torch.tensor([0.5, 0.2, 0.9]), torch.tensor([0.5, 0.8, 0.1])
    n_causal, n_other = torch.tensor([2, 1, 0]), torch.tensor([4, 2, 3])
    ratio, valid = attention_ratio(causal, other, n_causal, n_other)
    assert valid.tolist() == [True, True, False]
    assert ratio[:2].tolist() == pytest.approx([(0.5 / 2) / (0.5 / 4), 0.2 / (0.8 / 2)])
    out = reattention_loss(causal, other, n_causal, n_other, alpha=2.0, loss_type="div")
    assert torch.equal(out.ratio[valid], ratio[valid])


def test_rejects_unknown_loss_type_and_mismatched_shapes():
    x = torch.ones(2)
    n = torch.ones(2, dtype=torch.long)
    with pytest.raises(ValueError, match="loss_type"):
        reattention_loss(x, x, n, n, alpha=2.0, loss_type="kl")
    with pytest.raises(ValueError, match=r"\[R\]"):
        reattention_loss(x, x, torch.ones(3), n, alpha=2.0, loss_type="div")


def test_attention_weight_schedules():
    assert attention_weight(0) == 1.0
    assert attention_weight(2.0) == pytest.approx(math.exp(-2.0))
    assert attention_weight(1.5, decay=0.5) == pytest.approx(math.exp(-0.75))
    assert attention_weight(7.0, schedule="constant") == 1.0
    with pytest.raises(ValueError, match="schedule"):
        attention_weight(1.0, schedule="linear")


def test_held_ratio_averages_attention_before_dividing():
    n_c, n_o = torch.tensor([2.0, 4.0, 0.0]), torch.tensor([4.0, 4.0, 3.0])
    # Two heads per row; the second head of row 0 puts (almost) nothing on the non-causal columns.
    causal = torch.tensor([[0.4, 0.6], [0.2, 0.2], [0.0, 0.0]])
    other = torch.tensor([[0.4, 1e-30], [0.4, 0.4], [0.5, 0.5]])
    # Row 0: (0.5 / 2) / (0.2 / 4) = 5; row 1: (0.2 / 4) / (0.4 / 4) = 0.5; row 2 has no cause column.
    assert held_ratio(causal, other, n_c, n_o) == pytest.approx((5.0 + 0.5) / 2)
    assert held_ratio(causal.mean(-1), other.mean(-1), n_c, n_o) == pytest.approx((5.0 + 0.5) / 2)
    per_head, valid = attention_ratio(causal, other, n_c, n_o)
    assert float(per_head[valid].mean()) > 1e20  # what a mean of per-head ratios would have logged
    assert math.isnan(held_ratio(causal[2:], other[2:], n_c[2:], n_o[2:]))
