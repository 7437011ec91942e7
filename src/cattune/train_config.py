"""The training config: one flat, typed dataclass (``cattune train --config FILE key=value ...``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cattune.config import ConfigError

# The released LoRA preset (METHOD.md section 6): q/k/v and the MLP projections, not o_proj.
RELEASED_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainConfig:
    # What to train on.
    model: str = "smollm2-135m"
    train_file: str = ""
    output_dir: str = ""
    max_length: int = 256
    limit: int | None = None  # use only the first N training records
    skip_adjacent: bool = True  # the released pairing rule (METHOD.md section 3)

    # Optimisation (released settings in configs/; these defaults are the fast CPU ones).
    epochs: float = 3.0
    max_steps: int = -1  # > 0 caps the run and overrides epochs
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    max_grad_norm: float = 1.0
    seed: int = 42
    bf16: bool = False  # bf16 autocast where the hardware runs it natively; fp32 elsewhere (cattune.precision)
    gradient_checkpointing: bool = False

    # LoRA (PEFT); lora=false is full fine-tuning.
    lora: bool = True
    lora_r: int = 64
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_target_modules: list[str] = field(default_factory=lambda: list(RELEASED_LORA_TARGETS))

    # The Re-Attention term (METHOD.md section 5). attn_weight=0 is the baseline: same training,
    # attention still measured for the logs, no term added.
    attn_weight: float = 1.0
    attn_schedule: Literal["exp", "constant"] = "exp"  # exp: attn_weight * exp(-attn_decay * epoch)
    attn_decay: float = 1.0
    attn_alpha: float = 2.0
    attn_loss_type: Literal["div", "div2", "nll", "hinge"] = "div"
    attn_backend: Literal["recompute", "eager"] = "recompute"
    attn_layers: list[int] | None = None  # None: all layers; negative indices count from the end
    attn_per_head: bool = False  # hold every head to alpha instead of the head mean
    attn_per_layer: bool = False  # hold every chosen layer to alpha instead of the layer mean
    attn_sink: bool = True  # the first token counts as non-causal (released); false leaves it out of a_n

    # Path constraint (docs/STUDY.md): every position after the first named non-causal token (the
    # ``noncausal`` field, written by the STG generators) that is not itself inside such a span is
    # held to ``a_rest / a_noncausal >= path_alpha``: it must attend to the named spurious and
    # irrelevant tokens less than to the rest, so that no position on the way to the answer can
    # gather them. By default every (layer, head) is held to the threshold: a mean would let a few
    # heads keep moving the spurious values along.
    path_weight: float = 0.0  # 0: off
    path_alpha: float = 10.0
    path_loss_type: Literal["div", "div2", "nll", "hinge"] = "hinge"
    path_schedule: Literal["exp", "constant"] = "constant"  # exp uses attn_decay
    # Off for the first epochs (counted from 0): lets the LM loss learn the task from every route
    # before the term closes the non-causal ones (the study's stalled runs met it from the start).
    path_start_epoch: int = 0
    path_per_head: bool = True
    path_per_layer: bool = True

    # Position jitter (cattune.positions): up to this many random unit gaps in each training
    # sequence's position ids, so the number of tokens before a position (which the length of a
    # spurious value changes) stops being a reliable shortcut. 0: off; evaluation is unaffected.
    position_jitter: int = 0

    # Counterfactual augmentation (the comparator arm): every epoch sees each training record with
    # the values of everything that is not an annotated cause redrawn (STG-style data only).
    augment: Literal["stg", "stg-h"] | None = None

    # Logging and checkpoints.
    logging_steps: int = 5
    save_steps: int = 50
    save_total_limit: int = 2
    tensorboard: bool = True
    num_threads: int | None = None  # torch CPU threads; None keeps torch's default

    def validate(self) -> None:
        problems = []
        if self.max_length < 8:
            problems.append("max_length must be at least 8")
        if self.batch_size < 1 or self.grad_accum < 1:
            problems.append("batch_size and grad_accum must be at least 1")
        if self.epochs <= 0 and self.max_steps <= 0:
            problems.append("set epochs > 0 or max_steps > 0")
        if self.lr <= 0:
            problems.append("lr must be positive")
        if not 0 <= self.warmup_ratio < 1:
            problems.append("warmup_ratio must be in [0, 1)")
        if self.attn_weight < 0:
            problems.append("attn_weight must be >= 0 (0 is the baseline)")
        if self.attn_alpha <= 0:
            problems.append("attn_alpha must be positive")
        if self.position_jitter < 0:
            problems.append("position_jitter must be >= 0 (0 is off)")
        if self.path_weight < 0 or self.path_alpha <= 0:
            problems.append("path_weight must be >= 0 (0 is off) and path_alpha positive")
        if self.path_start_epoch < 0:
            problems.append("path_start_epoch must be >= 0 (0: from the first epoch)")
        if self.lora and (self.lora_r < 1 or not self.lora_target_modules):
            problems.append("lora needs lora_r >= 1 and at least one lora_target_modules entry")
        if self.limit is not None and self.limit < 1:
            problems.append("limit must be at least 1 (or null for all records)")
        if problems:
            raise ConfigError("; ".join(problems))


# Settings that say where a run lives and how it reports, not what it learns: a run may resume
# (or be reused by an experiment) with these changed. The training file is compared by name, so a
# run folder and its data may move together.
BOOKKEEPING = frozenset({"output_dir", "num_threads", "logging_steps", "save_steps", "save_total_limit", "tensorboard"})


def changed_settings(saved: Mapping[str, Any], config: TrainConfig) -> list[str]:
    """The settings in which ``config`` differs from a run's saved config, as ``key: old -> new``.

    A key the saved config lacks (written by an older cattune) takes its default value; keys that
    no longer exist are ignored.
    """
    defaults = TrainConfig()
    changes = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in BOOKKEEPING:
            continue
        old, new = saved.get(f.name, getattr(defaults, f.name)), getattr(config, f.name)
        if f.name == "train_file":
            old, new = Path(str(old)).name, Path(str(new)).name
        elif isinstance(new, float) and isinstance(old, int | float) and not isinstance(old, bool):
            old = float(old)
        if old != new:
            changes.append(f"{f.name}: {old!r} -> {new!r}")
    return changes
