"""The Re-Attention loss (METHOD.md section 5) on per-row attention statistics, and its weight.

The loss is a pure function of four per-row tensors: the attention mass a supervised row puts on
its cause columns, the mass on its other allowed columns (both already averaged over the chosen
layers, and over heads unless each head is held to the threshold), and the two column counts.
It is vectorised over rows; the released code loops over every example and row in Python.

Released semantics, kept exactly: a row is *valid* when it has at least one cause column and at
least one other allowed column; ``a_c`` and ``a_n`` are the mean probabilities over those
columns; a row whose ratio ``r = a_c / a_n`` is below ``alpha`` contributes its loss, a row at or
above contributes 0; the result is the mean over all valid rows (satisfied rows stay in the
denominator).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

LOSS_TYPES = ("div", "div2", "nll", "hinge")
WEIGHT_SCHEDULES = ("exp", "constant")


@dataclass
class ReAttentionOutput:
    """The loss and what to log about it."""

    loss: torch.Tensor  # scalar, differentiable; exactly 0.0 (with a grad path) when no row is valid
    ratio: torch.Tensor  # [R] or [R, H]: a_c / a_n per row (or row-head), detached; NaN where not valid
    valid: torch.Tensor  # bool, same shape as ratio
    satisfied_fraction: float  # share of valid rows (or row-heads) with ratio >= alpha; NaN if none is valid

    @property
    def mean_ratio(self) -> float:
        """Mean ratio over the valid rows (NaN when there are none)."""
        if not bool(self.valid.any()):
            return math.nan
        return float(self.ratio[self.valid].mean())


def _div(a_c: torch.Tensor, a_n: torch.Tensor, alpha: float) -> torch.Tensor:
    # The released default: negative, and -> -r for small masses.
    return -torch.log1p(a_c) / torch.log1p(a_n).clamp_min(torch.finfo(a_n.dtype).tiny)


def _div2(a_c: torch.Tensor, a_n: torch.Tensor, alpha: float) -> torch.Tensor:
    return -torch.log1p(a_c / (1 + a_n))


def _nll(a_c: torch.Tensor, a_n: torch.Tensor, alpha: float) -> torch.Tensor:
    return -a_c / (a_c + a_n).clamp_min(torch.finfo(a_n.dtype).tiny)


def _hinge(a_c: torch.Tensor, a_n: torch.Tensor, alpha: float) -> torch.Tensor:
    return alpha - a_c / a_n.clamp_min(torch.finfo(a_n.dtype).tiny)


_ROW_LOSS: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "div": _div,
    "div2": _div2,
    "nll": _nll,
    "hinge": _hinge,
}


def reattention_loss(
    causal_mass: torch.Tensor,
    other_mass: torch.Tensor,
    n_causal: torch.Tensor,
    n_other: torch.Tensor,
    *,
    alpha: float,
    loss_type: str,
) -> ReAttentionOutput:
    """The Re-Attention loss of a batch of supervised rows.

    ``causal_mass`` / ``other_mass``: [R] (heads averaged) or [R, H] (each head held to the
    threshold): summed attention probability over the row's cause columns / its other allowed
    columns. ``n_causal`` / ``n_other``: [R] column counts. ``a_c = causal_mass / n_causal``,
    ``a_n = other_mass / n_other``. Computed in fp32 (fp64 inputs stay fp64).
    """
    if loss_type not in _ROW_LOSS:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    a_c, a_n, ratio, valid = _row_means(causal_mass, other_mass, n_causal, n_other)
    active = valid & (ratio < alpha)
    # Rows that contribute nothing still pass through the formula (it is vectorised); give them
    # harmless stand-in values so their unused branch cannot produce inf/NaN gradients.
    inactive = ~active
    row_loss = _ROW_LOSS[loss_type](a_c.masked_fill(inactive, 0.0), a_n.masked_fill(inactive, 1.0), alpha)
    n_valid, n_active = int(valid.sum()), int(active.sum())
    loss = row_loss.masked_fill(inactive, 0.0).sum() / max(n_valid, 1)
    satisfied = (n_valid - n_active) / n_valid if n_valid else math.nan
    logged_ratio = ratio.detach().masked_fill(~valid, math.nan)
    return ReAttentionOutput(loss=loss, ratio=logged_ratio, valid=valid, satisfied_fraction=satisfied)


def attention_ratio(
    causal_mass: torch.Tensor, other_mass: torch.Tensor, n_causal: torch.Tensor, n_other: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ratio, valid)``: the ratio ``a_c / a_n`` the loss thresholds, per row (or row-head),
    and which rows are valid. Same inputs as :func:`reattention_loss`; fp32 inside."""
    _, _, ratio, valid = _row_means(causal_mass, other_mass, n_causal, n_other)
    return ratio, valid


def held_ratio(
    causal_mass: torch.Tensor, other_mass: torch.Tensor, n_causal: torch.Tensor, n_other: torch.Tensor
) -> float:
    """The ratio ``a_c / a_n`` of the attention averaged over the held units (heads, layers), mean
    over the valid rows; NaN when none is valid. What the logs call ``attn_ratio``: a mean of
    per-head ratios would be swamped by the heads whose non-causal attention is ~0, and this reads
    the same whether the loss holds each head or their mean."""
    if causal_mass.dim() == 2:  # [R, units] -> [R]
        causal_mass, other_mass = causal_mass.mean(-1), other_mass.mean(-1)
    ratio, valid = attention_ratio(causal_mass.detach(), other_mass.detach(), n_causal, n_other)
    return float(ratio[valid].mean()) if bool(valid.any()) else math.nan


def _row_means(
    causal_mass: torch.Tensor, other_mass: torch.Tensor, n_causal: torch.Tensor, n_other: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(a_c, a_n, ratio, valid)`` in fp32 (fp64 stays fp64), shaped like the masses."""
    if causal_mass.shape != other_mass.shape or causal_mass.dim() not in (1, 2):
        raise ValueError(f"causal_mass and other_mass must both be [R] or [R, H]; got {tuple(causal_mass.shape)} "
                         f"and {tuple(other_mass.shape)}")
    if n_causal.shape != causal_mass.shape[:1] or n_other.shape != causal_mass.shape[:1]:
        raise ValueError(f"n_causal and n_other must be [R] = [{causal_mass.shape[0]}]; got "
                         f"{tuple(n_causal.shape)} and {tuple(n_other.shape)}")
    dtype = torch.promote_types(causal_mass.dtype, torch.float32)
    cm, om = causal_mass.to(dtype), other_mass.to(dtype)
    nc, no = n_causal.to(dtype), n_other.to(dtype)
    if cm.dim() == 2:  # per-head mode: the counts are the row's, shared by its heads
        nc, no = nc[:, None].expand_as(cm), no[:, None].expand_as(cm)

    valid = torch.minimum(nc, no) >= 1  # [R] or [R, H]
    a_c = cm / nc.clamp_min(1)
    a_n = om / no.clamp_min(1)
    ratio = a_c / a_n.clamp_min(torch.finfo(dtype).tiny)  # finite even when the other mass underflows to 0
    return a_c, a_n, ratio, valid


def attention_weight(epoch: float, *, decay: float = 1.0, schedule: str = "exp") -> float:
    """Weight of the attention term at a (fractional) epoch counted from 0.

    ``"exp"``: ``exp(-decay * epoch)`` as released (decay 1.0); ``"constant"``: 1.0 throughout.
    """
    if schedule == "exp":
        return math.exp(-decay * epoch)
    if schedule == "constant":
        return 1.0
    raise ValueError(f"unknown weight schedule {schedule!r}; choose one of {', '.join(WEIGHT_SCHEDULES)}")
