"""The training recipe: config -> data -> model (LoRA or full) -> ``CATTrainer`` -> a saved run.

A run folder holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one object per logging
step), ``tensorboard/``, ``checkpoint-N/`` folders (each marked complete only once fully written,
so a run killed while saving resumes from the previous one), ``model/`` (the final weights or
LoRA adapter, with the tokenizer) and ``train_summary.json``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainingArguments, set_seed

from cattune import __version__
from cattune.augment import PerEpochExamples, SelectEpoch, counterfactual_records, epochs_needed
from cattune.collator import CATCollator, build_examples, noncausal_spans
from cattune.config import ConfigError, read_yaml, save_config, to_dict
from cattune.data.records import load_records
from cattune.evaluate import git_revision
from cattune.files import atomic_write_json
from cattune.models import EMBEDDED_MODELS, load_model, load_tokenizer
from cattune.precision import usable_precision
from cattune.train_config import TrainConfig, changed_settings
from cattune.trainer import CATTrainer, ReAttentionSettings

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "cattune_complete"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class MetricsFile(TrainerCallback):
    """Appends every training log to ``metrics.jsonl`` (flushed per line)."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()


class CompleteMarker(TrainerCallback):
    """Marks a checkpoint folder complete after the Trainer has written all of it."""

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                (folder / COMPLETE_MARKER).write_text(str(state.global_step))


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint marked complete; incomplete ones (a kill during saving) are removed."""
    found = []
    for child in output_dir.glob("checkpoint-*"):
        m = _CHECKPOINT.match(child.name)
        if m and child.is_dir():
            if (child / COMPLETE_MARKER).exists():
                found.append((int(m.group(1)), child))
            else:
                logger.warning("removing incomplete checkpoint %s", child)
                shutil.rmtree(child, ignore_errors=True)
    return max(found)[1] if found else None


def check_same_settings(out: Path, config: TrainConfig) -> None:
    """Refuse to resume or reuse the run in ``out`` under settings other than those it was trained with.

    A resumed run with (say) another loss weight would mix two recipes in one model, and a
    finished run reused under an edited config would report results the config does not describe.
    """
    saved_path = out / "config.yaml"
    started = (out / "model").exists() or any(out.glob("checkpoint-*"))
    if not started or not saved_path.exists():
        return
    changes = changed_settings(read_yaml(saved_path), config)
    if changes:
        raise ConfigError(
            f"{out} was trained with other settings than the ones given now ({'; '.join(changes)}). "
            f"Use the settings in {saved_path} to resume or reuse it, or delete {out} (or choose another "
            "output_dir) to train it afresh."
        )


def _trim_metrics(path: Path, last_step: int) -> None:
    """Drop logged rows past the checkpoint we resume from: they will be logged again."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


def _apply_lora(model: Any, config: TrainConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in config.lora_target_modules if t in names]
    if not targets:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ConfigError(
            f"none of lora_target_modules {config.lora_target_modules} exist in {type(model).__name__}; "
            f"its linear layers are named {', '.join(linear)} (or set lora_target_modules=all-linear)"
        )
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets if config.lora_target_modules != ["all-linear"] else "all-linear",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _tensorboard(config: TrainConfig, out: Path) -> list[TrainerCallback]:
    if not config.tensorboard:
        return []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    # The Trainer would log under output_dir/runs/<date>; one fixed folder per run is easier to find.
    return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(out / "tensorboard")))]


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path
    global_step: int
    train_loss: float
    summary: dict[str, Any]


def train(config: TrainConfig, *, resume: bool = False, model: Any = None, tokenizer: Any = None) -> TrainResult:
    """Run (or resume) a CAT training run as described by ``config``.

    ``model`` and ``tokenizer`` may be given to train an in-memory model (tests, notebooks); by
    default both are loaded from ``config.model``.
    """
    from cattune.attention import prepare_model_for_cat

    if not config.train_file:
        raise ConfigError("train_file is not set (give train_file=PATH)")
    if not config.output_dir:
        raise ConfigError("output_dir is not set (give output_dir=DIR)")
    config = usable_precision(config)  # before the settings check: a run saves what it ran with
    out = Path(config.output_dir)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    if (out / "model").exists() and not resume:
        raise ConfigError(f"{out} already holds a finished run; choose another output_dir")
    checkpoint = None
    if out.exists() and any(out.glob("checkpoint-*")):
        checkpoint = last_complete_checkpoint(out)
        if not resume and checkpoint is not None:
            raise ConfigError(f"{out} already holds checkpoints; pass --resume to continue it or choose another output_dir")
    if resume:
        check_same_settings(out, config)
        if (out / "model").exists() and (out / "train_summary.json").exists():
            summary = json.loads((out / "train_summary.json").read_text())
            logger.info("%s is a finished run (%d steps); nothing to resume", out, summary["global_step"])
            return TrainResult(out, out / "model", summary["global_step"], summary["train_loss"], summary)
    revision = git_revision()  # the code this invocation runs (it may change on disk meanwhile)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    metrics_path = out / "metrics.jsonl"
    if checkpoint is not None:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        _trim_metrics(metrics_path, int(state.get("global_step", 0)))
        logger.info("resuming from %s", checkpoint)
    elif metrics_path.exists():
        metrics_path.unlink()

    records = load_records(config.train_file, require_annotation=config.attn_weight > 0)
    if config.limit:
        records = records[: config.limit]
    if config.path_weight > 0 and not any(noncausal_spans(rec) for rec in records):
        raise ConfigError(f"path_weight > 0 needs named non-causal spans, and no record of {config.train_file} has a "
                          "'noncausal' field; add it to a released file with 'cattune data spans', generate the data with "
                          "'cattune data stg' / 'stg-h', or set path_weight=0")
    tokenizer = tokenizer or load_tokenizer(config.model)
    encode = functools.partial(build_examples, tokenizer=tokenizer, max_length=config.max_length,
                               skip_adjacent=config.skip_adjacent, path_rows=config.path_weight > 0)
    data = encode(records)
    if data.without_rows:
        logger.warning("%d of %d records yield no supervised row; they train on the LM loss only",
                       data.without_rows, len(records))
    train_dataset: Any = data.examples
    callbacks: list[TrainerCallback] = []
    if config.augment:
        n_copies = epochs_needed(len(records), epochs=config.epochs, max_steps=config.max_steps,
                                 batch_size=config.batch_size, grad_accum=config.grad_accum,
                                 world_size=int(os.environ.get("WORLD_SIZE", "1")))
        train_dataset = PerEpochExamples([
            encode(counterfactual_records(records, config.augment, seed=config.seed, epoch=e)).examples
            for e in range(n_copies)
        ])
        callbacks.append(SelectEpoch(train_dataset))
        logger.info("counterfactual augmentation (%s): %d redrawn copies of %d records, one per epoch",
                    config.augment, n_copies, len(records))
    # The Trainer seeds only when it starts; the LoRA matrices (and any freshly initialised weights)
    # are drawn before that, so seed here or one seed gives a different run every time.
    set_seed(config.seed)
    if model is None:
        model = load_model(config.model)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if config.lora:
        model = _apply_lora(model, config)
    prepare_model_for_cat(model, config.attn_backend)

    args = TrainingArguments(
        output_dir=str(out),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type=config.lr_scheduler,
        max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        data_seed=config.seed,
        bf16=config.bf16,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=False,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = CATTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        data_collator=CATCollator(tokenizer.pad_token_id),
        reattention=ReAttentionSettings(
            weight=config.attn_weight,
            schedule=config.attn_schedule,
            decay=config.attn_decay,
            alpha=config.attn_alpha,
            loss_type=config.attn_loss_type,
            backend=config.attn_backend,
            layers=config.attn_layers,
            per_head=config.attn_per_head,
            per_layer=config.attn_per_layer,
            sink=config.attn_sink,
            path_weight=config.path_weight,
            path_alpha=config.path_alpha,
            path_loss_type=config.path_loss_type,
            path_schedule=config.path_schedule,
            path_start_epoch=config.path_start_epoch,
            path_per_head=config.path_per_head,
            path_per_layer=config.path_per_layer,
        ),
        position_jitter=config.position_jitter,
        callbacks=[MetricsFile(metrics_path), CompleteMarker(), *callbacks, *_tensorboard(config, out)],
    )
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    model_dir = out / "model"
    if trainer.is_world_process_zero():
        tmp = out / ".model.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        adapter_cfg = tmp / "adapter_config.json"
        if adapter_cfg.exists() and config.model in EMBEDDED_MODELS:
            # Name the embedded base portably instead of by this machine's cache path.
            cfg = json.loads(adapter_cfg.read_text())
            cfg["base_model_name_or_path"] = config.model
            adapter_cfg.write_text(json.dumps(cfg, indent=2))
        shutil.rmtree(model_dir, ignore_errors=True)
        os.replace(tmp, model_dir)
    summary = {
        "cattune_version": __version__,
        "git_revision": revision,
        "global_step": result.global_step,
        "train_loss": result.training_loss,
        "records": len(records),
        "records_without_rows": data.without_rows,
        "records_truncated": data.truncated,
        "supervised_rows": data.stats.rows,
        "spans_missing": data.stats.effects_missing + data.stats.causes_missing,
        "metrics": result.metrics,
        "config": to_dict(config),
    }
    if trainer.is_world_process_zero():
        atomic_write_json(out / "train_summary.json", summary)
    if math.isnan(result.training_loss):
        logger.warning("training loss is NaN")
    return TrainResult(out, model_dir, result.global_step, result.training_loss, summary)
