"""CAT training: the Re-Attention term inside a ``transformers.Trainer``.

``ReAttentionMixin`` adds the weighted term to any Trainer subclass whose ``compute_loss`` runs the
model forward (``Trainer`` itself, TRL's ``SFTTrainer``, ...)::

    class CATSFTTrainer(ReAttentionMixin, SFTTrainer):
        pass

    trainer = CATSFTTrainer(model=model, args=args, train_dataset=examples,
                            data_collator=CATCollator(tokenizer.pad_token_id),
                            reattention=ReAttentionSettings(alpha=2.0))

``CATTrainer`` is ``ReAttentionMixin`` on ``Trainer``. Both log the two terms separately
(``lm_loss``, ``attn_loss``) with the attention diagnostics (``attn_ratio``, ``attn_satisfied``,
``attn_weight`` and the attention share on each named column set). Distributed training (DDP,
FSDP, DeepSpeed) comes through accelerate, as for any Trainer.
"""

from __future__ import annotations

import inspect
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Trainer

from cattune.attention import CATAttentionError, RowSupervision, capture_row_attention, pretrained_model
from cattune.collator import PAIR_PREFIX
from cattune.encoding import IGNORE_INDEX
from cattune.loss import attention_weight, held_ratio, reattention_loss
from cattune.positions import jittered_position_ids


_CORE_LOGS = ("attn_loss", "attn_ratio", "attn_satisfied", "attn_share_cause", "attn_weight", "lm_loss",
              "path_loss", "path_satisfied", "path_share_noncausal", "path_weight")


@dataclass
class ReAttentionSettings:
    """The Re-Attention term's settings (see ``TrainConfig`` for what each means)."""

    weight: float = 1.0
    schedule: str = "exp"
    decay: float = 1.0
    alpha: float = 2.0
    loss_type: str = "div"
    backend: str = "recompute"
    layers: list[int] | None = None
    per_head: bool = False
    per_layer: bool = False
    sink: bool = True  # the first token counts as non-causal
    # The path constraint (TrainConfig.path_*); it needs batches built with path rows.
    path_weight: float = 0.0
    path_alpha: float = 10.0
    path_loss_type: str = "hinge"
    path_schedule: str = "constant"
    path_start_epoch: int = 0
    path_per_head: bool = True
    path_per_layer: bool = True


@dataclass
class _Supervision:
    rows: RowSupervision
    answer: torch.Tensor | None  # [R] bool, None: every row is an answer row
    path: torch.Tensor | None  # [R] bool, None: no path rows


def _pop_supervision(inputs: dict[str, Any]) -> _Supervision | None:
    rows = inputs.pop("cat_rows", None)
    sets = {k[len(PAIR_PREFIX):]: inputs.pop(k) for k in list(inputs) if k.startswith(PAIR_PREFIX)}
    answer, path = inputs.pop("cat_answer_rows", None), inputs.pop("cat_path_rows", None)
    if rows is None or rows.numel() == 0:
        return None
    return _Supervision(RowSupervision(rows=rows, column_sets=sets), answer, path)


def _select(stats: tuple[torch.Tensor, ...], rows: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    return stats if rows is None else tuple(t[rows.to(t.device)] for t in stats)


class ReAttentionMixin:
    """Adds ``w * L_attn`` to the wrapped Trainer's loss; see the module docstring."""

    def __init__(self, *args: Any, reattention: ReAttentionSettings | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.reattention = reattention or ReAttentionSettings()
        # The term is a per-batch mean; keep the LM loss a per-batch mean too so the Trainer scales
        # both the same way under gradient accumulation (and DDP averages both the same way).
        self.model_accepts_loss_kwargs = False
        self._cat_sums: dict[str, float] = defaultdict(float)
        self._cat_counts: dict[str, int] = defaultdict(int)

    def _record(self, name: str, value: float) -> None:
        if math.isfinite(value):
            self._cat_sums[name] += value
            self._cat_counts[name] += 1

    def _scheduled(self, weight: float, schedule: str, start_epoch: int = 0) -> float:
        epoch = math.floor(self.state.epoch or 0.0)  # the released code's integer epoch, from 0
        if weight == 0 or epoch < start_epoch:
            return 0.0
        return weight * attention_weight(epoch, decay=self.reattention.decay, schedule=schedule)

    def current_attention_weight(self) -> float:
        return self._scheduled(self.reattention.weight, self.reattention.schedule)

    def current_path_weight(self) -> float:
        s = self.reattention
        return self._scheduled(s.path_weight, s.path_schedule, s.path_start_epoch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[override]
        supervision = _pop_supervision(inputs)
        if supervision is None:
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
            if model.training:
                self._record("lm_loss", loss.detach().float().item())
            return (loss, outputs) if return_outputs else loss
        s = self.reattention
        with capture_row_attention(model, supervision.rows, backend=s.backend, layers=s.layers) as capture:
            inputs = {**inputs, **capture.forward_kwargs}
            lm_loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
            masses = capture.masses(outputs, inputs.get("attention_mask"), first_token=not s.sink)
        stats = masses.row_statistics(per_head=s.per_head, per_layer=s.per_layer, sink=s.sink)
        answer_stats = _select(stats, supervision.answer)
        term = reattention_loss(*answer_stats, alpha=s.alpha, loss_type=s.loss_type)
        weight = self.current_attention_weight()
        loss = lm_loss + weight * term.loss if weight > 0 else lm_loss
        path_term, path_weight = None, self.current_path_weight()
        names = [n for n in masses.mass if n != "cause"]
        if supervision.path is not None and names:
            path_stats = masses.path_statistics(names, per_head=s.path_per_head, per_layer=s.path_per_layer)
            path_term = reattention_loss(*_select(path_stats, supervision.path), alpha=s.path_alpha,
                                         loss_type=s.path_loss_type)
            if path_weight > 0:
                loss = loss + path_weight * path_term.loss
        if model.training:
            self._record("lm_loss", lm_loss.detach().float().item())
            self._record("attn_loss", term.loss.detach().float().item())
            self._record("attn_weight", weight)
            self._record("attn_satisfied", term.satisfied_fraction)
            self._record("attn_ratio", held_ratio(*answer_stats))  # _record skips NaN
            if path_term is not None:
                self._record("path_loss", path_term.loss.detach().float().item())
                self._record("path_weight", path_weight)
                self._record("path_satisfied", path_term.satisfied_fraction)
                named = masses.union_mass(names).detach().float()[:, supervision.path.to(lm_loss.device)]
                if named.numel():
                    self._record("path_share_noncausal", named.mean().item())
            self._record_shares(masses, supervision.answer)
        if isinstance(outputs, dict) and "attentions" in outputs:
            outputs["attentions"] = None  # eager maps are large; nothing downstream needs them
        return (loss, outputs) if return_outputs else loss

    def _record_shares(self, masses: Any, answer: torch.Tensor | None) -> None:
        for name, mass in masses.mass.items():
            # Share of each answer row's attention (mean over layers and heads) on the set's columns.
            mass = mass.detach().float()
            if answer is not None:
                mass = mass[:, answer.to(mass.device)]
            if mass.numel():
                self._record(f"attn_share_{name}", mass.mean().item())

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        if self._cat_counts and "loss" in logs:
            accelerator = getattr(self, "accelerator", None)
            distributed = accelerator is not None and accelerator.num_processes > 1
            # Every process must reduce the same names in the same order; the core terms are
            # recorded on every step, the per-set shares only where the data names such sets.
            names = [n for n in _CORE_LOGS if n in self._cat_counts] if distributed else sorted(self._cat_counts)
            values = torch.tensor([self._cat_sums[n] / self._cat_counts[n] for n in names], dtype=torch.float64)
            if distributed:
                values = accelerator.reduce(values.to(accelerator.device), reduction="mean").cpu()
            for name, value in zip(names, values.tolist()):
                logs[name] = round(value, 6)
            self._cat_sums.clear()
            self._cat_counts.clear()
        super().log(logs, *args, **kwargs)


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    try:
        hf = pretrained_model(model)
    except CATAttentionError:  # not a transformers model: use the standard path
        return False
    return "logits_to_keep" in inspect.signature(type(hf).forward).parameters


class LabelledLogitsTrainer(Trainer):
    """``Trainer`` whose LM loss projects only the positions that have a label onto the vocabulary.

    CAT examples label only the target and eos (a few tokens of a 60-150 token sequence), yet the
    standard causal-LM loss computes the LM head and a log-softmax over the whole vocabulary at
    every position. Passing the labelled positions as ``logits_to_keep`` gives the same loss (mean
    cross-entropy over the labelled tokens, in fp32) and the same gradients; on SmolLM2 (49k
    vocabulary) with STG batches it took about 6% off a LoRA step. Models whose forward has no
    ``logits_to_keep`` use the standard path. ``outputs.logits`` holds only the kept positions,
    flattened to [N, V].
    """

    def _keeps_logits(self, model: torch.nn.Module) -> bool:
        # Checked once per model: finding the transformers model walks every module.
        cache = self.__dict__.setdefault("_logits_to_keep_by_model", {})
        if id(model) not in cache:
            cache[id(model)] = _accepts_logits_to_keep(model)
        return cache[id(model)]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[override]
        labels = inputs.get("labels")
        if (labels is None or self.label_smoother is not None or self.compute_loss_func is not None
                or not self._keeps_logits(model)):
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        targets = labels[:, 1:]  # position p predicts token p + 1
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = targets != IGNORE_INDEX
        inputs = {k: v for k, v in inputs.items() if k != "labels"}
        outputs = model(**inputs, logits_to_keep=keep)
        logits = outputs["logits"]  # [N, V], N = labelled tokens
        if logits.shape[0] == 0:
            loss = logits.sum() * 0.0
        else:
            loss = torch.nn.functional.cross_entropy(logits.float(), targets[keep[:, :-1]])
        outputs["loss"] = loss
        return (loss, outputs) if return_outputs else loss


class PositionJitterMixin:
    """Training forwards get position ids with random gaps (:mod:`cattune.positions`), so the number
    of tokens before a position stops being a reliable signal; evaluation keeps the ordinary ids.
    ``position_jitter`` is the most gaps a sequence gets (0: off)."""

    def __init__(self, *args: Any, position_jitter: int = 0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.position_jitter = position_jitter

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[override]
        if self.position_jitter > 0 and model.training and "position_ids" not in inputs:
            # The global torch RNG: the Trainer checkpoints and restores it, so a resumed run draws the same gaps.
            inputs = {**inputs, "position_ids": jittered_position_ids(inputs["input_ids"], self.position_jitter)}
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)


class CATTrainer(PositionJitterMixin, ReAttentionMixin, LabelledLogitsTrainer):
    """``transformers.Trainer`` with the Re-Attention term (and the LM head on labelled positions
    only), and optional position jitter."""
