"""``cattune train``: fine-tune a causal LM with (or, with attn_weight=0, without) the CAT term."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from cattune.config import load_config
from cattune.train_config import TrainConfig


def _keys_help() -> str:
    lines = []
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        lines.append(f"  {f.name}={default!r}")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a model with the Re-Attention term (LoRA or full)",
        description=(
            "Fine-tune a causal LM on release-format JSONL with the CAT Re-Attention term. "
            "Settings come from --config (YAML) and key=value overrides; attn_weight=0 gives the "
            "baseline (same training, no attention term). The run folder (output_dir) receives "
            "config.yaml, metrics.jsonl, tensorboard/, checkpoints and model/."
        ),
        epilog="keys and defaults:\n" + _keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last complete checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. output_dir=runs/x max_steps=50")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cattune.training import train

    config = load_config(TrainConfig, args.config, args.overrides)
    result = train(config, resume=args.resume)
    print(f"trained {result.global_step} steps, final train loss {result.train_loss:.4f}", file=sys.stdout)
    print(f"run folder: {result.output_dir}  (model: {result.model_dir})")
    return 0
