"""Attention probabilities of the supervised rows, with or without eager attention.

The Re-Attention loss needs, for a few query rows per example, the softmax probabilities of every
selected layer and head. Two backends supply them:

``"recompute"`` (default)
    The model runs its ordinary SDPA kernels through a custom attention function registered with
    transformers' ``AttentionInterface`` under the name ``"cat_sdpa"`` (with the SDPA mask builder,
    so padding and sliding-window masks reach it exactly as they reach ``"sdpa"``). Outside a
    capture it *is* SDPA. Inside :func:`capture_row_attention` it also keeps, for each selected
    layer, the supervised rows' queries and a reference to the keys; then
    :meth:`RowAttentionCapture.masses` recomputes, for the supervised rows only,
    ``softmax(q_i K^T * scale + mask_i)`` in fp32 with gradients: O(R * H * T * D) per layer,
    never a ``[B, H, T, T]`` tensor. Grouped-query attention is handled by grouping the query
    heads over their shared key head instead of repeating keys.
``"eager"`` (reference and fallback)
    The released recipe: the model runs eager attention with ``output_attentions=True`` and the
    rows are read from the returned ``[B, H, T, T]`` maps of every layer.

Which probabilities the loss sees: the recompute backend sees the softmax before attention
dropout (its expectation under dropout); the eager backend sees what the model returns, which
for models that apply dropout to the returned weights (GPT-2 with ``attn_pdrop > 0`` in train
mode) is after dropout, as in the released code. With dropout 0 the two are the same.

Gradient checkpointing: only non-reentrant checkpointing is supported (transformers' default).
Inside the checkpointed layer the capture only keeps a reference to the keys and gathers the
query rows with an operation that saves no tensor for backward, so a backward replay that skips
it saves exactly what the first forward saved; a replay inside the capture is recognised (it runs
inside autograd's backward) and not recorded again. Reentrant checkpointing runs the first
forward without autograd, which would silently drop the attention term's gradient; it is
refused with an explanation.

The method's row supervision (rows -> cause columns) is unrelated to the Hugging Face
``attention_mask`` (padding); the latter is only used here to know which keys are real tokens.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

logger = logging.getLogger(__name__)

BACKENDS = ("recompute", "eager")
CAT_ATTENTION = "cat_sdpa"
_IMPLEMENTATION = {"recompute": CAT_ATTENTION, "eager": "eager"}
_CAPTURE_ATTR = "_cattune_row_capture"
_UNSUPPORTED_KWARGS = ("position_bias", "softcap", "s_aux", "sinks")


class CATAttentionError(RuntimeError):
    """A model cannot supply the attention the chosen backend needs; the message says what to use."""


# --------------------------------------------------------------------------------------------
# The registered attention function


def cat_sdpa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA attention that also hands the layer's query and key to an active row capture."""
    capture = getattr(module, _CAPTURE_ATTR, None)
    if capture is not None:
        capture._record(module, query, key, attention_mask, scaling, is_causal, kwargs)
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
    )


def register_cat_attention() -> None:
    """Register ``"cat_sdpa"`` with transformers (idempotent; done on import of this module).

    The mask builder must be registered too: for an implementation name without one,
    transformers builds no mask at all, and padding would be silently ignored.
    """
    AttentionInterface.register(CAT_ATTENTION, cat_sdpa_attention_forward)
    AttentionMaskInterface.register(CAT_ATTENTION, sdpa_mask)


register_cat_attention()


# --------------------------------------------------------------------------------------------
# Model plumbing


def pretrained_model(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers model inside ``model`` (itself, or wrapped by peft, DDP or similar)."""
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            return module
    raise CATAttentionError(f"{type(model).__name__} contains no transformers PreTrainedModel")


def num_attention_layers(model: torch.nn.Module) -> int:
    config = pretrained_model(model).config.get_text_config()
    return int(config.num_hidden_layers)


def resolve_layers(layers: Sequence[int] | None, n_layers: int) -> tuple[int, ...]:
    """Absolute, sorted, distinct layer indices; ``None`` means all, negative counts from the end."""
    if layers is None:
        return tuple(range(n_layers))
    resolved = set()
    for layer in layers:
        if not -n_layers <= int(layer) < n_layers:
            raise ValueError(f"layer {layer} is out of range for a model with {n_layers} layers")
        resolved.add(int(layer) % n_layers)
    if not resolved:
        raise ValueError("layers must name at least one layer (or be None for all)")
    return tuple(sorted(resolved))


def prepare_model_for_cat(model: torch.nn.Module, backend: str = "recompute") -> None:
    """Switch ``model`` (plain, peft- or DDP-wrapped) to the attention implementation ``backend`` needs."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    hf = pretrained_model(model)
    name = type(hf).__name__
    wanted = _IMPLEMENTATION[backend]
    if backend == "recompute" and not (type(hf)._supports_attention_backend and type(hf)._supports_sdpa):
        raise CATAttentionError(
            f"{name} does not run its attention through transformers' AttentionInterface with SDPA, so the "
            "'recompute' backend cannot see its attention; use attention_backend='eager' for this model"
        )
    register_cat_attention()
    if hf.config._attn_implementation != wanted:
        try:
            hf.set_attn_implementation(wanted)
        except (ValueError, ImportError, KeyError) as exc:
            other = "eager" if backend == "recompute" else "recompute"
            raise CATAttentionError(
                f"{name} cannot switch to attention implementation {wanted!r} ({exc}); "
                f"try attention_backend={other!r}"
            ) from exc
    if hf.config._attn_implementation != wanted:
        other = "eager" if backend == "recompute" else "recompute"
        raise CATAttentionError(
            f"{name} did not switch to attention implementation {wanted!r} (it reports "
            f"{hf.config._attn_implementation!r}); load it with attn_implementation={wanted!r} or use "
            f"attention_backend={other!r}"
        )
    logger.debug("%s uses attention implementation %r for backend %r", name, wanted, backend)


def _uses_reentrant_checkpointing(hf: PreTrainedModel) -> bool:
    for module in hf.modules():
        if getattr(module, "gradient_checkpointing", False) is True:
            func = getattr(module, "_gradient_checkpointing_func", None)
            if func is None:
                continue
            # torch.utils.checkpoint treats a missing use_reentrant as True.
            keywords = func.keywords if isinstance(func, functools.partial) else {}
            if keywords.get("use_reentrant", True) is not False:
                return True
    return False


def _in_backward() -> bool:
    # Non-reentrant gradient checkpointing replays a layer's forward inside autograd's backward.
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


# --------------------------------------------------------------------------------------------
# Supervision and per-row masses


def _as_index_pairs(value: Any, what: str) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=torch.long)
    if tensor.numel() == 0:
        return tensor.reshape(0, 2)
    if tensor.dim() != 2 or tensor.shape[1] != 2:
        raise ValueError(f"{what} must have shape [N, 2], got {tuple(tensor.shape)}")
    return tensor


@dataclass
class RowSupervision:
    """Which query rows are supervised and, per named column set, which key columns each row has.

    ``rows``: [R, 2] (batch index, query position). ``column_sets``: name -> [P, 2] (index into
    ``rows``, key position); ``"cause"`` is always present (it may be empty), other names (e.g.
    ``"spurious"``) are carried along for diagnostics and extra terms.
    """

    rows: torch.Tensor
    column_sets: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        self.rows = _as_index_pairs(self.rows, "rows")
        if "cause" not in self.column_sets:
            raise ValueError("column_sets must contain 'cause'")
        sets = {}
        for name, pairs in self.column_sets.items():
            pairs = _as_index_pairs(pairs, f"column set {name!r}")
            if pairs.numel() and (int(pairs[:, 0].min()) < 0 or int(pairs[:, 0].max()) >= len(self.rows)):
                raise ValueError(f"column set {name!r} refers to rows outside 0..{len(self.rows) - 1}")
            if pairs.numel() and int(pairs[:, 1].min()) < 0:
                raise ValueError(f"column set {name!r} has a negative key position")
            sets[name] = pairs
        self.column_sets = sets

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def from_row_columns(
        cls,
        causes: Sequence[Mapping[int, Iterable[int]]],
        extra_sets: Mapping[str, Sequence[Mapping[int, Iterable[int]]]] | None = None,
    ) -> RowSupervision:
        """Build from per-example ``{row: cause columns}`` mappings (``CausalRows.rows``).

        ``extra_sets``: name -> per-example ``{row: columns}`` for rows that also appear in ``causes``.
        """
        rows: list[tuple[int, int]] = []
        index: dict[tuple[int, int], int] = {}
        cause_pairs: list[tuple[int, int]] = []
        for b, example in enumerate(causes):
            for row in sorted(example):
                index[(b, row)] = len(rows)
                rows.append((b, row))
                cause_pairs.extend((index[(b, row)], col) for col in sorted(set(example[row])))
        sets = {"cause": cause_pairs}
        for name, per_example in (extra_sets or {}).items():
            if name == "cause":
                raise ValueError("'cause' is built from causes; name extra sets differently")
            if len(per_example) != len(causes):
                raise ValueError(f"extra set {name!r} has {len(per_example)} examples, causes have {len(causes)}")
            pairs = []
            for b, example in enumerate(per_example):
                for row, cols in example.items():
                    if (b, row) not in index:
                        raise ValueError(f"extra set {name!r} names row {row} of example {b}, which has no causes")
                    pairs.extend((index[(b, row)], col) for col in sorted(set(cols)))
            sets[name] = pairs
        return cls(torch.tensor(rows, dtype=torch.long).reshape(-1, 2),
                   {k: torch.tensor(v, dtype=torch.long).reshape(-1, 2) for k, v in sets.items()})


@dataclass
class RowMasses:
    """Attention mass of the supervised rows on each column set, per selected layer and head."""

    mass: dict[str, torch.Tensor]  # per column set: [L, R, H] fp32 mass on the set's allowed columns
    other: torch.Tensor  # [L, R, H] fp32 mass on the allowed columns outside "cause" (summed directly)
    n_columns: dict[str, torch.Tensor]  # per set: [R] distinct allowed columns (j <= i, not padding)
    n_allowed: torch.Tensor  # [R] allowed keys of each row
    layers: tuple[int, ...] = field(default_factory=tuple)  # absolute indices of the L layers
    first: torch.Tensor | None = None  # [L, R, H] mass on the first token where it is allowed and not a cause
    n_first: torch.Tensor | None = None  # [R] 1 where that holds, else 0

    def row_statistics(
        self, *, per_head: bool = False, per_layer: bool = False, sink: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(causal_mass, other_mass, n_causal, n_other)`` for :func:`cattune.loss.reattention_loss`.

        Masses are averaged over layers unless ``per_layer`` and over heads unless ``per_head``:
        [R], [R, H], [R, L] or [R, L * H]. ``sink=False`` leaves the first token (the attention
        sink) out of the non-causal side.
        """
        other, n_other = self.other, self.n_allowed - self.n_columns["cause"]
        if not sink:
            if self.first is None or self.n_first is None:
                raise ValueError("these masses were reduced without the first-token mass (row_masses(first_token=True))")
            other, n_other = other - self.first, n_other - self.n_first
        return (self.reduce(self.mass["cause"], per_head=per_head, per_layer=per_layer),
                self.reduce(other, per_head=per_head, per_layer=per_layer), self.n_columns["cause"], n_other)

    def path_statistics(
        self, names: Sequence[str], *, per_head: bool = False, per_layer: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rest_mass, named_mass, n_rest, n_named)``: the path constraint's ratio ``a_rest / a_named``
        in the argument order of :func:`cattune.loss.reattention_loss`, where ``named`` is the union of
        the (disjoint) column sets ``names`` and ``rest`` every other allowed column."""
        named = self.union_mass(names)
        n_named = sum(self.n_columns[n] for n in names)
        rest = self.mass["cause"] + self.other - named
        return (self.reduce(rest, per_head=per_head, per_layer=per_layer),
                self.reduce(named, per_head=per_head, per_layer=per_layer), self.n_allowed - n_named, n_named)

    def union_mass(self, names: Sequence[str]) -> torch.Tensor:
        """[L, R, H] mass on the union of the (disjoint) column sets ``names``."""
        return sum(self.mass[n] for n in names)

    @staticmethod
    def reduce(mass: torch.Tensor, *, per_head: bool, per_layer: bool) -> torch.Tensor:
        """[L, R, H] -> [R], [R, H], [R, L] or [R, L * H]."""
        if not per_layer:
            return mass.mean(dim=(0, 2)) if not per_head else mass.mean(dim=0)
        if not per_head:
            return mass.mean(dim=2).transpose(0, 1)
        return mass.permute(1, 0, 2).reshape(mass.shape[1], -1)


def allowed_columns(rows: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """[R, T] bool: the keys row (b, i) may attend to under the method's rule (j <= i, not padding).

    ``key_valid``: [B, T] bool, False at padding. A row whose own position is padding has none.
    """
    b, pos = rows[:, 0], rows[:, 1]
    t = torch.arange(key_valid.shape[1], device=key_valid.device)
    own = key_valid[b, pos]
    return (t[None, :] <= pos[:, None]) & key_valid[b] & own[:, None]


def row_masses(
    row_probabilities: Iterable[torch.Tensor],
    supervision: RowSupervision,
    key_valid: torch.Tensor,
    *,
    layers: Sequence[int] = (),
    first_token: bool = False,
) -> RowMasses:
    """Reduce per-layer row probabilities ([R, H, T] each) to masses per column set.

    ``key_valid``: [B, T] bool (False at padding). ``first_token``: also reduce the mass on the
    first token (needed by ``row_statistics(sink=False)``). Both backends and the diagnostics end here.
    """
    rows = supervision.rows.to(key_valid.device)
    n_rows, n_keys = len(rows), key_valid.shape[1]
    if n_rows and int(rows[:, 1].max()) >= n_keys:
        raise ValueError(f"a supervised row lies at or past the sequence length {n_keys}")
    allowed = allowed_columns(rows, key_valid)  # [R, T]
    members: dict[str, torch.Tensor] = {}
    for name, pairs in supervision.column_sets.items():
        pairs = pairs.to(key_valid.device)
        # Columns at or past the sequence end (cut off by truncation) land in a spare last column.
        member = torch.zeros(n_rows, n_keys + 1, dtype=torch.bool, device=key_valid.device)
        flat = pairs[:, 0] * (n_keys + 1) + pairs[:, 1].clamp(max=n_keys)
        member.view(-1).index_fill_(0, flat, True)
        members[name] = member[:, :n_keys] & allowed
    names = list(members)
    extra = []
    if first_token:
        first = torch.zeros_like(allowed)
        first[:, 0] = True
        first &= allowed & ~members["cause"]
        extra.append(first)
    # [R, T, S'] weights, S' = one per set, the first token when asked, then "allowed but not a
    # cause" (members are subsets of allowed, so xor leaves the allowed non-cause columns).
    weights = torch.stack([members[n] for n in names] + extra + [allowed ^ members["cause"]], dim=-1)  # [R, T, S']
    per_layer = []
    converted: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}  # converted once, not per layer
    for probs in row_probabilities:  # [R, H, T]
        dtype = torch.promote_types(probs.dtype, torch.float32)  # fp32, or fp64 when given fp64
        key = (probs.device, dtype)
        if key not in converted:
            converted[key] = weights.to(probs.device, dtype)
        with torch.autocast(device_type=probs.device.type, enabled=False):
            per_layer.append(torch.bmm(probs.to(dtype), converted[key]))  # [R, H, S']
    if not per_layer:
        raise ValueError("no layer probabilities to reduce")
    stacked = torch.stack(per_layer).permute(3, 0, 1, 2)  # [S', L, R, H]
    return RowMasses(
        mass={n: stacked[k] for k, n in enumerate(names)},
        other=stacked[-1],
        n_columns={n: members[n].sum(-1) for n in names},
        n_allowed=allowed.sum(-1),
        layers=tuple(layers),
        first=stacked[-2] if first_token else None,
        n_first=first.sum(-1) if first_token else None,
    )


# --------------------------------------------------------------------------------------------
# The capture


class _GatherRows(torch.autograd.Function):
    """``query[b, :, pos, :]`` -> [R, H, D] that saves no tensor for backward.

    Saved tensors would be packed by non-reentrant checkpointing, and a replay that skips the
    gather would then mismatch; the indices are constants, kept as plain attributes. The backward
    writes all rows into one zero tensor (R separate selects would each build a full-size one).
    """

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, b: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        ctx.query_shape, ctx.b, ctx.pos = query.shape, b, pos
        return query[b, :, pos, :]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad_query = grad.new_zeros(ctx.query_shape)
        grad_query.transpose(1, 2).index_put_((ctx.b, ctx.pos), grad, accumulate=True)  # [B, T, H, D] view
        return grad_query, None, None


@dataclass
class _LayerInputs:
    query_rows: torch.Tensor  # [R, H, D], the supervised rows' queries
    key: torch.Tensor  # [B, Hkv, T, D]
    mask: torch.Tensor | None  # [B or 1, 1 or H, T, T] bool or additive float, or None (causal)
    scaling: float
    is_causal: bool


@dataclass
class _RowSlots:
    """Rows packed per example into slots, so one batched matmul per example computes only their
    scores: [E, H, S, D] @ [E, Hkv, D, T]."""

    rows: torch.Tensor  # [R, 2]
    examples: torch.Tensor  # [E] batch indices that have rows
    example_of_row: torch.Tensor  # [R] index into examples
    slot_of_row: torch.Tensor  # [R]
    n_slots: int

    @classmethod
    def plan(cls, rows: torch.Tensor) -> _RowSlots:
        examples, example_of_row = torch.unique(rows[:, 0], return_inverse=True)
        order = torch.argsort(example_of_row, stable=True)
        counts = torch.bincount(example_of_row, minlength=len(examples))
        starts = torch.cumsum(counts, 0) - counts
        slot_of_row = torch.empty_like(example_of_row)
        slot_of_row[order] = torch.arange(len(rows), device=rows.device) - starts[example_of_row[order]]
        return cls(rows, examples, example_of_row, slot_of_row, int(counts.max()) if len(rows) else 0)


def _recompute_row_probabilities(inputs: _LayerInputs, slots_plan: _RowSlots) -> torch.Tensor:
    """fp32 softmax probabilities [R, H, T] of the supervised rows of one layer."""
    q_rows, key = inputs.query_rows, inputs.key
    n_heads, n_kv, n_keys, dim = q_rows.shape[1], key.shape[1], key.shape[2], q_rows.shape[2]
    if n_heads % n_kv:
        raise CATAttentionError(f"{n_heads} query heads do not group over {n_kv} key heads")
    group = n_heads // n_kv
    rows = slots_plan.rows
    if len(rows) == 0:
        return key.new_zeros(0, n_heads, n_keys, dtype=torch.float32)
    b, pos = rows[:, 0], rows[:, 1]
    examples, example_of_row, slot_of_row = slots_plan.examples, slots_plan.example_of_row, slots_plan.slot_of_row
    n_slots = slots_plan.n_slots
    with torch.autocast(device_type=key.device.type, enabled=False):
        slots = torch.zeros(len(examples), n_slots, n_heads, dim, dtype=torch.float32, device=key.device)
        slots = slots.index_put((example_of_row, slot_of_row), q_rows.float())  # [E, S, H, D]
        slots = slots.permute(0, 2, 1, 3).reshape(len(examples), n_kv, group * n_slots, dim)
        keys = key if len(examples) == key.shape[0] else key.index_select(0, examples)
        scores = torch.matmul(slots, keys.float().transpose(-1, -2)) * inputs.scaling  # [E, Hkv, G*S, T]
        scores = scores.view(len(examples), n_heads, n_slots, n_keys)[example_of_row, :, slot_of_row, :]  # [R, H, T]
        lowest = torch.finfo(torch.float32).min
        mask = inputs.mask
        if mask is None:
            if inputs.is_causal:
                t = torch.arange(n_keys, device=key.device)
                scores = scores.masked_fill((t[None, :] > pos[:, None])[:, None, :], lowest)
        else:
            mask_b = b if mask.shape[0] > 1 else torch.zeros_like(b)
            row_mask = mask[mask_b, :, pos, :]  # [R, 1 or H, T]
            if row_mask.dtype == torch.bool:
                # A finite fill keeps fully masked rows (left padding) uniform, as eager does, not NaN.
                scores = scores.masked_fill(~row_mask, lowest)
            else:
                scores = scores + row_mask.float()
        return torch.softmax(scores, dim=-1)


class RowAttentionCapture:
    """Collects the supervised rows' attention during one forward; see :func:`capture_row_attention`."""

    def __init__(self, model: PreTrainedModel, supervision: RowSupervision, backend: str, layers: tuple[int, ...]):
        self.model = model
        self.supervision = supervision
        self.backend = backend
        self.layers = layers
        self.forward_kwargs: dict[str, Any] = {"output_attentions": True} if backend == "eager" else {}
        self._layer_set = frozenset(layers)
        self._rows = supervision.rows
        self._max_row = tuple(int(m) for m in supervision.rows.max(0).values) if len(supervision.rows) else (0, 0)
        self._inputs: dict[int, _LayerInputs] = {}
        self._open = True

    def _record(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                mask: torch.Tensor | None, scaling: float | None, is_causal: bool | None,
                kwargs: Mapping[str, Any]) -> None:
        layer = getattr(module, "layer_idx", None)
        if layer is None:
            raise CATAttentionError(f"{type(module).__name__} has no layer_idx; use attention_backend='eager'")
        if layer not in self._layer_set or _in_backward():
            return
        if layer in self._inputs:
            raise CATAttentionError(f"layer {layer} ran twice inside one capture_row_attention block; "
                                    "run exactly one forward per capture")
        if len(self._rows) and (self._max_row[0] >= query.shape[0] or self._max_row[1] >= query.shape[2]):
            raise CATAttentionError(f"supervised rows reach (batch {self._max_row[0]}, position {self._max_row[1]}) "
                                    f"but the batch is {query.shape[0]} x {query.shape[2]}")
        if query.shape[2] != key.shape[2]:
            raise CATAttentionError("capture_row_attention covers one full forward without a KV cache "
                                    f"(layer {layer} saw {query.shape[2]} queries and {key.shape[2]} keys)")
        unsupported = [k for k in _UNSUPPORTED_KWARGS if kwargs.get(k) is not None]
        if unsupported:
            raise CATAttentionError(f"{type(self.model).__name__} passes {unsupported} to its attention, which the "
                                    "'recompute' backend does not reproduce; use attention_backend='eager'")
        # Keep only the supervised rows' queries, not the layer's whole query tensor.
        rows = self._rows.to(query.device)
        query_rows = _GatherRows.apply(query, rows[:, 0], rows[:, 1])
        self._inputs[layer] = _LayerInputs(
            query_rows=query_rows,
            key=key,
            mask=mask,
            scaling=float(scaling) if scaling is not None else query.shape[-1] ** -0.5,
            is_causal=bool(is_causal) if is_causal is not None else bool(getattr(module, "is_causal", True)),
        )

    def _layer_row_probabilities(self, outputs: Any) -> Iterator[torch.Tensor]:
        rows = self.supervision.rows
        name = type(self.model).__name__
        if self.backend == "recompute":
            missing = [layer for layer in self.layers if layer not in self._inputs]
            if missing:
                raise CATAttentionError(
                    f"{name} did not pass layers {missing} through the 'cat_sdpa' attention function during the "
                    "forward inside the capture (no forward yet, or the model bypasses transformers' "
                    "AttentionInterface); use attention_backend='eager' for this model")
            plan = _RowSlots.plan(rows.to(self._inputs[self.layers[0]].key.device))
            for layer in self.layers:
                yield _recompute_row_probabilities(self._inputs[layer], plan)
            return
        attentions = getattr(outputs, "attentions", None) if outputs is not None else None
        if outputs is None:
            raise CATAttentionError("the eager backend reads the attention maps from the model outputs: "
                                    "pass them to masses(outputs, attention_mask)")
        n_layers = num_attention_layers(self.model)
        if not attentions or len(attentions) != n_layers or any(a is None for a in attentions):
            got = 0 if not attentions else sum(a is not None for a in attentions)
            raise CATAttentionError(
                f"{name} returned {got} attention maps for {n_layers} layers with output_attentions=True; it "
                "must run eager attention (prepare_model_for_cat(model, 'eager'), which needs a model that "
                "supports attn_implementation='eager'), or use attention_backend='recompute'")
        for layer in self.layers:
            maps = attentions[layer]  # [B, H, T, T]
            r = rows.to(maps.device)
            yield maps[r[:, 0], :, r[:, 1], :].float()

    def _key_valid(self, attention_mask: torch.Tensor | None, outputs: Any) -> torch.Tensor:
        if attention_mask is not None:
            return attention_mask.bool()
        if self.backend == "recompute" and self._inputs:
            key = next(iter(self._inputs.values())).key
            return torch.ones(key.shape[0], key.shape[2], dtype=torch.bool, device=key.device)
        attentions = getattr(outputs, "attentions", None)
        if attentions:
            maps = attentions[0]
            return torch.ones(maps.shape[0], maps.shape[-1], dtype=torch.bool, device=maps.device)
        raise CATAttentionError("no forward has been captured yet: run the model inside the with-block first")

    def _check_open(self) -> None:
        if not self._open:
            raise CATAttentionError("call masses() / row_probabilities() inside the capture_row_attention block "
                                    "(the captured tensors are released when it exits)")

    def masses(self, outputs: Any = None, attention_mask: torch.Tensor | None = None, *,
               first_token: bool = False) -> RowMasses:
        """Per-set attention masses of the supervised rows after the forward inside the block.

        ``attention_mask``: the [B, T] padding mask given to the model (None: no padding).
        ``outputs``: the model outputs (needed by the eager backend). ``first_token``: see
        :func:`row_masses`.
        """
        self._check_open()
        key_valid = self._key_valid(attention_mask, outputs)
        return row_masses(self._layer_row_probabilities(outputs), self.supervision, key_valid, layers=self.layers,
                          first_token=first_token)

    def row_probabilities(self, outputs: Any = None) -> torch.Tensor:
        """[L, R, H, T] fp32 probabilities of the supervised rows (for maps and diagnostics)."""
        self._check_open()
        return torch.stack(list(self._layer_row_probabilities(outputs)))

    def _close(self) -> None:
        self._open = False
        self._inputs.clear()


@contextmanager
def capture_row_attention(
    model: torch.nn.Module,
    supervision: RowSupervision,
    *,
    backend: str = "recompute",
    layers: Sequence[int] | None = None,
) -> Iterator[RowAttentionCapture]:
    """Capture the supervised rows' attention of the one forward run inside the block.

    ``model`` may be the plain model or wrapped (peft, DDP); run the forward with
    ``**capture.forward_kwargs`` and call :meth:`RowAttentionCapture.masses` inside the block.
    ``layers``: which layers are averaged (None = all; negative indices count from the end).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    hf = pretrained_model(model)
    wanted = _IMPLEMENTATION[backend]
    current = hf.config._attn_implementation
    if current != wanted:
        raise CATAttentionError(f"{type(hf).__name__} runs attention implementation {current!r}, but "
                                f"attention_backend={backend!r} needs {wanted!r}: call "
                                f"prepare_model_for_cat(model, {backend!r}) first")
    if hf.training and torch.is_grad_enabled() and _uses_reentrant_checkpointing(hf):
        raise CATAttentionError(
            "reentrant gradient checkpointing runs the first forward without autograd, so the attention term "
            "would get no gradient; enable checkpointing with gradient_checkpointing_kwargs={'use_reentrant': False} "
            "(transformers' default)")
    capture = RowAttentionCapture(hf, supervision, backend, resolve_layers(layers, num_attention_layers(hf)))
    attached: list[torch.nn.Module] = []
    if backend == "recompute":
        # The attention function receives its module; layers carry the capture they report to.
        attached = [m for m in hf.modules()
                    if isinstance(getattr(m, "layer_idx", None), int) and not getattr(m, "is_cross_attention", False)]
        if any(getattr(m, _CAPTURE_ATTR, None) is not None for m in attached):
            raise CATAttentionError("capture_row_attention blocks cannot be nested on the same model")
        for module in attached:
            setattr(module, _CAPTURE_ATTR, capture)
    try:
        yield capture
    finally:
        for module in attached:
            delattr(module, _CAPTURE_ATTR)
        capture._close()
