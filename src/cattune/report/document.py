"""``report.md``: the summary of the run, the comparison table, the findings, the further tables,
the plots and how to read them, written with the plots by :func:`write_report`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cattune.files import atomic_write_text
from cattune.report.comparison import comparison_table
from cattune.report.format import _arm_label, _md_table
from cattune.report.grid import grid_rows, grid_table
from cattune.report.plots import (
    _has_layer_attention,
    _has_training_curves,
    plot_accuracy,
    plot_attention_by_layer,
    plot_attention_over_training,
    plot_grid_summary,
    plot_heatmaps,
)
from cattune.report.results import _arms, _reference, _seeds, _splits
from cattune.report.sentences import findings
from cattune.report.tables import _attention_table, _per_seed_table, loss_table, numeric_error_table, token_change_table

logger = logging.getLogger(__name__)

_HOW_TO_READ = """\
Each cell is a percentage with its 95% interval. The question is whether CAT makes the model
answer from the causes instead of the shortcut, and behaviour answers it:

- **Accuracy** on the in-distribution test (IID) shows the task was learned; accuracy on the
  out-of-distribution tests (OOD, where the spurious values no longer track the causes) shows
  whether the model relied on the shortcut. Compare every accuracy with the **majority-class**
  row: a model at that level has learned nothing usable.
- **Flip rate**: the share of answers that change when only the spurious values are redrawn.
  Lower is better and 0 means the answer depends on the causes alone, but a model that ignores
  its input also never flips, so read it together with accuracy.
- **CAT - baseline** (likewise any other arm - baseline) is the paired comparison on the same
  items: the difference with its 95% interval and the exact McNemar p-value. A difference is
  called better or worse only when p < 0.05; otherwise the arms are not significantly
  different. With one seed per arm the intervals cover the sampling of test items only, not
  seed-to-seed variance.
- **Attention shares** (mean over layers and heads of the attention the supervised rows put on
  each kind of token) are a diagnostic: a model can keep attention off a token and still use
  its value (Pruthi et al., 2020), so attention moving to the causes is not by itself success.
"""


def _get(mapping: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, Mapping) or key not in mapping:
            return None
        mapping = mapping[key]
    return mapping


def _arm_settings(config: Mapping[str, Any], arm: str) -> str:
    """The arm's attention-term settings (shared train settings with the arm's overrides)."""
    train = _get(config, "train") or {}
    overrides = _get(config, "arms", arm) or {}
    effective = {**{k: v for k, v in train.items() if k.startswith("attn_")}, **overrides}
    core = ("attn_loss_type", "attn_alpha", "attn_weight", "attn_schedule")
    parts = []
    if effective.get("attn_weight") == 0:
        parts.append("attention term off")
    elif effective:
        described = [f"{key.removeprefix('attn_')} {effective[key]}" for key in core if key in effective]
        if described:
            parts.append("attention term: " + ", ".join(described))
    # Every other override too (attn_per_head, lr, ...): two arms must not read alike.
    parts += [f"{k}={v}" for k, v in overrides.items() if k not in core]
    return "; ".join(parts)


def _summary(results: Mapping[str, Any]) -> str:
    config = results.get("config") or {}
    rows: list[list[str]] = []
    model = _get(config, "train", "model") or _get(config, "model")
    if model:
        rows.append(["model", f"`{model}`"])
    train_file = _get(config, "train_file") or _get(config, "train", "train_file")
    generate = _get(config, "generate")
    if train_file:
        rows.append(["train file", f"`{train_file}`"])
    elif isinstance(generate, Mapping):
        rows.append(["data", "generated: " + ", ".join(f"{k} {v}" for k, v in generate.items())])
    tests = _get(config, "test_files")
    if isinstance(tests, Mapping) and tests:
        rows.append(["test files", "<br>".join(f"{k}: `{v}`" for k, v in tests.items())])
    if seeds := _seeds(results):
        rows.append(["seeds", ", ".join(str(s) for s in seeds)])
    for name, arm in _arms(results).items():
        settings = _arm_settings(config, name)
        train = arm.get("train") or {}
        done: list[str] = []
        if train.get("steps") is not None:
            done.append(f"{train['steps']} steps")
        if train.get("seconds") is not None:
            done.append(f"{train['seconds'] / 60:.1f} min")
        if train.get("final_lm_loss") is not None:
            done.append(f"final LM loss {train['final_lm_loss']:.3g}")
        if train.get("final_train_loss") is not None:
            done.append(f"mean training loss {train['final_train_loss']:.3g}")
        text = "; ".join(p for p in (settings, ", ".join(done)) if p)
        rows.append([f"arm: {_arm_label(name)}", text or "—"])
    version = results.get("cattune_version")
    revision = results.get("git_revision")
    rows.append(["cattune", f"{version or 'unknown version'}, git revision {revision or 'unknown'}"])
    if results.get("created"):
        rows.append(["created", str(results["created"])])
    if config:
        rows.append(["full config", "`results.json`, key `config`"])
    return _md_table(["", ""], rows)


def write_report(results: dict, out_dir: str | Path, *, metrics: dict[str, list[dict]] | None = None,
                 heatmaps: dict[str, dict] | None = None) -> dict[str, Path]:
    """Write ``report.md`` and the PNG plots the data supports into ``out_dir``.

    Returns name -> written file: always "report"; "accuracy" when a split was evaluated;
    "attention_training" when ``metrics`` log shares, ratio or loss; "attention_layers" when
    per-layer attention was measured; "heatmaps" when heat-map data is given.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    images: list[tuple[str, str]] = []  # (caption, file name)

    has_splits = bool(_splits(results))
    if has_splits:
        written["accuracy"] = plot_accuracy(results, out / "accuracy.png")
        images.append(("Accuracy per split with 95% intervals and the majority class; flip rate", "accuracy.png"))
    if _has_training_curves(metrics):
        assert metrics is not None
        written["attention_training"] = plot_attention_over_training(metrics, out / "attention_training.png")
        images.append(("Attention shares, Re-Attention ratio and LM loss during training "
                       "(solid = CAT, dashed = baseline)", "attention_training.png"))
    if _has_layer_attention(results):
        written["attention_layers"] = plot_attention_by_layer(results, out / "attention_layers.png")
        images.append(("Attention share per layer after training", "attention_layers.png"))
    if heatmaps and any(h and h.get("matrix") for h in heatmaps.values()):
        written["heatmaps"] = plot_heatmaps(heatmaps, out / "attention_heatmaps.png")
        images.append(("Attention of the supervised rows on one OOD example (green = causes, red = spurious)",
                       "attention_heatmaps.png"))

    name = results.get("name") or "experiment"
    parts = [f"# cattune experiment: {name}", _summary(results)]
    parts += ["## Results", comparison_table(results) if has_splits else "No split was evaluated."]
    if found := findings(results):
        parts += ["## Findings", "\n".join(f"- {sentence}" for sentence in found)]
    if attention := _attention_table(results):
        parts += ["## Attention (diagnostic)",
                  "Share of the supervised rows' attention (mean over layers and heads) on each kind of token.",
                  attention]
    if len(_arms(results)) > 2 or len(_seeds(results)) > 1:
        rows = grid_rows(results)
        if any(r.get("ood_mean") is not None for r in rows):
            parts += ["## Grid", grid_table(rows, _reference(results))]
            written["grid"] = plot_grid_summary(rows, out / "grid.png")
            images.append(("IID/OOD accuracy and flip rate per arm, mean ± sd across seeds", "grid.png"))
    if numeric_error := numeric_error_table(results):
        parts += ["## Numeric error", numeric_error]
    if by_length := token_change_table(results):
        parts += ["## Flips by change in token count", by_length]
    if per_seed := _per_seed_table(results):
        parts += ["## Per seed", per_seed]
    if losses := loss_table(results):
        parts += ["## Training losses by epoch",
                  "Mean of each logged term over the epoch's logging steps (the terms before their weights).",
                  losses]
    if images:
        parts += ["## Plots", "\n\n".join(f"![{caption}]({file})" for caption, file in images)]
    parts += ["## How to read this", _HOW_TO_READ.rstrip()]
    written["report"] = atomic_write_text(out / "report.md", "\n\n".join(parts) + "\n")
    logger.info("wrote %s", written["report"])
    return written
