"""The report's PNG plots: accuracy and flip rate per split, attention over training, attention
heat-maps, attention per layer and the grid summary.

Plots are drawn on bare ``matplotlib.figure.Figure`` objects (Agg rendering, no pyplot state), so
the module works without a display and leaves no figures open.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from cattune.report.format import _arm_label
from cattune.report.grid import _n_seeds
from cattune.report.results import (
    ATTENTION_CATEGORIES,
    BASELINE,
    CAT,
    _arm_order,
    _arms,
    _has_flip,
    _majority,
    _split_n,
    _split_stats,
    _splits,
)

logger = logging.getLogger(__name__)

_CATEGORY_COLORS = {"cause": "tab:green", "spurious": "tab:red", "irrelevant": "tab:gray",
                    "sink": "tab:purple", "first_token": "tab:purple", "other": "tab:brown"}
_ARM_COLORS = {BASELINE: "tab:blue", CAT: "tab:orange", "base model": "tab:gray"}
_EXTRA_COLORS = ("tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
_DPI = 120


def _arm_color(arm: str, arms: Sequence[str]) -> str:
    if arm in _ARM_COLORS:
        return _ARM_COLORS[arm]
    others = [a for a in arms if a not in _ARM_COLORS]
    return _EXTRA_COLORS[others.index(arm) % len(_EXTRA_COLORS)] if arm in others else "black"


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write the PNG through a temporary file and a rename, so a killed run leaves no half image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=_DPI, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("wrote %s", path)
    return path


def _error(value: float, low: Any, high: Any) -> tuple[float, float]:
    if low is None or high is None:
        return (math.nan, math.nan)  # no interval recorded: draw no error bar rather than a zero one
    return (max(value - low, 0.0) * 100, max(high - value, 0.0) * 100)


def _bar_panel(ax: Any, results: Mapping[str, Any], splits: Sequence[str], measure: str) -> None:
    arms = _arms(results)
    names = [n for n in arms if any((s := _split_stats(arms[n], sp)) and s.get(measure) is not None for sp in splits)]
    width = 0.8 / max(len(names), 1)
    low_key, high_key = ("ci_low", "ci_high") if measure == "accuracy" else ("flip_ci_low", "flip_ci_high")
    x = np.arange(len(splits))
    for i, name in enumerate(names):
        values, errors, positions = [], [], []
        for j, split in enumerate(splits):
            stats = _split_stats(arms[name], split)
            if not stats or stats.get(measure) is None:
                continue
            v = float(stats[measure])
            values.append(100 * v)
            errors.append(_error(v, stats.get(low_key), stats.get(high_key)))
            positions.append(x[j] - 0.4 + width * (i + 0.5))
        err = np.array(errors).T
        bars = ax.bar(positions, values, width * 0.92, yerr=err, capsize=3, label=_arm_label(name),
                      color=_arm_color(name, list(arms)), edgecolor="black", linewidth=0.4)
        for bar, value, e in zip(bars, values, errors):
            ax.text(bar.get_x() + bar.get_width() / 2, value + (0 if math.isnan(e[1]) else e[1]) + 1, f"{value:.1f}",
                    ha="center", va="bottom", fontsize=7)
    if measure == "accuracy":
        marked = False
        for j, split in enumerate(splits):
            majority = _majority(results, split)
            if majority is not None:
                ax.hlines(100 * majority, x[j] - 0.45, x[j] + 0.45, colors="black", linestyles="--",
                          linewidth=1.2, label=None if marked else "majority class")
                marked = True
    labels = []
    for split in splits:
        n = _split_n(results, split, "n" if measure == "accuracy" else "flip_n")
        labels.append(f"{split}\n(n={n})" if n is not None else split)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylim(0, 110)
    ax.grid(axis="y", alpha=0.3)
    # Below the axes: any corner inside would cover a bar.
    n_entries = len(names) + (measure == "accuracy" and any(_majority(results, s) is not None for s in splits))
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=max(n_entries, 1), frameon=False)


def plot_accuracy(results: dict, path: str | os.PathLike[str]) -> Path:
    """Accuracy per split and arm with 95% error bars and the majority class marked; a second
    panel with the flip rate where it was measured."""
    splits = _splits(results)
    if not splits:
        raise ValueError("results has no evaluated splits to plot")
    flip_splits = [s for s in splits if any(_has_flip(_split_stats(a, s)) for a in _arms(results).values())]
    panels = 2 if flip_splits else 1
    widths = [max(len(splits), 1), max(len(flip_splits), 1)][:panels]
    fig = Figure(figsize=(2.2 * sum(widths) + 2.5, 4.2), layout="constrained")
    axes = fig.subplots(1, panels, gridspec_kw={"width_ratios": widths}, squeeze=False)[0]
    _bar_panel(axes[0], results, splits, "accuracy")
    axes[0].set_ylabel("accuracy %")
    axes[0].set_title("Accuracy (95% CI); dashed = majority class", fontsize=10)
    if flip_splits:
        _bar_panel(axes[1], results, flip_splits, "flip_rate")
        axes[1].set_ylabel("flip rate %")
        axes[1].set_title("Flip rate when only spurious values change\n(lower is better)", fontsize=10)
    fig.suptitle(str(results.get("name", "experiment")), fontsize=11)
    return _save(fig, path)


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of ``key``, averaged over rows logged at the same step (several seeds)."""
    by_step: dict[float, list[float]] = {}
    for row in rows:
        value, step = row.get(key), row.get("step")
        if step is None or value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        by_step.setdefault(float(step), []).append(float(value))
    steps = sorted(by_step)
    return np.array(steps), np.array([np.mean(by_step[s]) for s in steps])


def _arm_style(arm: str, arms: Sequence[str]) -> str:
    if arm == BASELINE:
        return "--"
    others = [a for a in arms if a != BASELINE]
    return ("-", ":", "-.")[others.index(arm) % 3]


_SHARE_KEYS = ("attn_share_cause", "attn_share_spurious", "attn_share_irrelevant")


def _has_training_curves(metrics: Mapping[str, Sequence[Mapping[str, Any]]] | None) -> bool:
    keys = (*_SHARE_KEYS, "attn_ratio", "lm_loss", "loss")
    return bool(metrics) and any(len(_series(rows, k)[0]) for rows in metrics.values() for k in keys)


def plot_attention_over_training(metrics: dict[str, list[dict]], path: str | os.PathLike[str]) -> Path:
    """Attention shares on cause / spurious / irrelevant tokens over steps (colour = category,
    line style = arm), the causal attention ratio, and the LM loss: each panel only if logged."""
    if not _has_training_curves(metrics):
        raise ValueError("metrics has no logged attention shares, ratio or loss to plot")
    arms = _arm_order(metrics)
    panels = []
    if any(len(_series(metrics[a], k)[0]) for a in arms for k in _SHARE_KEYS):
        panels.append("shares")
    if any(len(_series(metrics[a], "attn_ratio")[0]) for a in arms):
        panels.append("ratio")
    loss_key = {a: ("lm_loss" if len(_series(metrics[a], "lm_loss")[0]) else "loss") for a in arms}
    if any(len(_series(metrics[a], loss_key[a])[0]) for a in arms):
        panels.append("loss")
    fig = Figure(figsize=(5.0 * len(panels), 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        if panel == "shares":
            for arm in arms:
                for key in _SHARE_KEYS:
                    steps, values = _series(metrics[arm], key)
                    if len(steps):
                        category = key.removeprefix("attn_share_")
                        ax.plot(steps, 100 * values, _arm_style(arm, arms), color=_CATEGORY_COLORS[category],
                                linewidth=1.4)
            categories = [k.removeprefix("attn_share_") for k in _SHARE_KEYS
                          if any(len(_series(metrics[a], k)[0]) for a in arms)]
            handles = [Line2D([], [], color=_CATEGORY_COLORS[c], label=c) for c in categories]
            handles += [Line2D([], [], color="black", linestyle=_arm_style(a, arms), label=_arm_label(a))
                        for a in arms]
            ax.legend(handles=handles, fontsize=8)
            ax.set_ylabel("share of attention from supervised rows %")
            ax.set_title("Attention shares during training", fontsize=10)
        else:
            for arm in arms:
                key = "attn_ratio" if panel == "ratio" else loss_key[arm]
                steps, values = _series(metrics[arm], key)
                if len(steps):
                    ax.plot(steps, values, _arm_style(arm, arms), color=_arm_color(arm, arms),
                            label=_arm_label(arm), linewidth=1.4)
            if panel == "ratio":
                ratios = np.concatenate([_series(metrics[a], "attn_ratio")[1] for a in arms])
                # Ratios span orders of magnitude between arms (0.4 vs 8): a log axis keeps both readable.
                if ratios.min() > 0 and ratios.max() / ratios.min() > 10:
                    ax.set_yscale("log")
                    plain = FuncFormatter(lambda v, _: f"{v:g}")
                    ax.yaxis.set_major_formatter(plain)
                    # Label the minor ticks too when the range spans few decades, else only powers of 10.
                    few_decades = math.log10(ratios.max() / ratios.min()) <= 2
                    ax.yaxis.set_minor_formatter(plain if few_decades else NullFormatter())
                ax.set_ylabel("causal / non-causal attention ratio")
                ax.set_title("Re-Attention ratio", fontsize=10)
            else:
                ax.set_ylabel("training LM loss")
                ax.set_title("Language-model loss", fontsize=10)
            ax.legend(fontsize=8)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _token_label(token: str) -> str:
    # Escape '$' so matplotlib never parses a token as mathtext; make blanks visible.
    text = token.replace("\n", "\\n").replace("$", r"\$").strip()
    return text if text else "␣"


def plot_heatmaps(heatmaps: dict[str, dict], path: str | os.PathLike[str]) -> Path:
    """One heat-map per arm (stacked, so the token labels stay readable), on a shared square-root
    colour scale; cause / spurious / irrelevant token labels coloured."""
    arms = [a for a in _arm_order(heatmaps) if heatmaps[a] and heatmaps[a].get("matrix")]
    if not arms:
        raise ValueError("no heat-map data to plot")
    matrices = {a: np.asarray(heatmaps[a]["matrix"], dtype=float) for a in arms}
    for arm, m in matrices.items():
        if m.ndim != 2 or m.shape[1] != len(heatmaps[arm].get("tokens", [])):
            raise ValueError(f"heat-map of {arm!r}: matrix shape {m.shape} does not match its tokens")
    vmax = max(float(m.max()) for m in matrices.values()) or 1.0
    # The attention sink takes most of the mass; a square-root scale keeps the content tokens visible.
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=vmax)
    longest = max(m.shape[1] for m in matrices.values())
    heights = [max(m.shape[0], 1) * 0.35 + 2.2 for m in matrices.values()]
    # Constrained layout reserves room for each panel's rotated token labels.
    fig = Figure(figsize=(max(8.0, 0.17 * longest + 2), sum(heights)), layout="constrained")
    axes = fig.subplots(len(arms), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    image = None
    for ax, arm in zip(axes, arms):
        data, m = heatmaps[arm], matrices[arm]
        image = ax.imshow(m, aspect="auto", cmap="viridis", norm=norm, interpolation="nearest")
        ax.set_xticks(range(m.shape[1]), [_token_label(t) for t in data["tokens"]], rotation=90, fontsize=7)
        rows = data.get("row_labels") or [str(i) for i in range(m.shape[0])]
        ax.set_yticks(range(m.shape[0]), [_token_label(r) for r in rows], fontsize=7)
        colour_of = {}
        for category, indices in (data.get("categories") or {}).items():
            for i in indices:
                colour_of[int(i)] = _CATEGORY_COLORS.get(category, "black")
        for i, label in enumerate(ax.get_xticklabels()):
            if i in colour_of:
                label.set_color(colour_of[i])
                label.set_fontweight("bold")
        title = _arm_label(arm) + (f": {data['title']}" if data.get("title") else "")
        ax.set_title(title.replace("$", r"\$"), fontsize=9, loc="left")
    categories = sorted({c for a in arms for c in (heatmaps[a].get("categories") or {})},
                        key=lambda c: ATTENTION_CATEGORIES.index(c) if c in ATTENTION_CATEGORIES else 99)
    if categories:
        fig.legend(handles=[Patch(color=_CATEGORY_COLORS.get(c, "black"), label=f"{c} tokens") for c in categories],
                   loc="outside upper right", fontsize=8, ncols=len(categories))
    fig.colorbar(image, ax=list(axes), label="attention (square-root scale)", fraction=0.02, pad=0.01)
    return _save(fig, path)


def _has_layer_attention(results: Mapping[str, Any]) -> bool:
    blocks = [*(_arms(results).values()), results.get("base_model") or {}]
    return any((b.get("attention") or {}).get("per_layer") for b in blocks)


def plot_attention_by_layer(results: dict, path: str | os.PathLike[str]) -> Path:
    """Attention share per layer on each token category, one line per arm (and the base model)."""
    blocks = {"base model": results.get("base_model") or {}, **_arms(results)}
    per_layer = {name: (b.get("attention") or {}).get("per_layer") or {} for name, b in blocks.items()}
    per_layer = {name: layers for name, layers in per_layer.items() if layers}
    if not per_layer:
        raise ValueError("results has no per-layer attention to plot")
    present = {c for layers in per_layer.values() for c, v in layers.items() if v}
    categories = [c for c in ("cause", "spurious", "irrelevant") if c in present] or sorted(present)
    names = list(per_layer)
    fig = Figure(figsize=(4.5 * len(categories), 3.8), layout="constrained")
    axes = fig.subplots(1, len(categories), squeeze=False, sharey=True)[0]
    for ax, category in zip(axes, categories):
        for name in names:
            values = per_layer[name].get(category)
            if values:
                style = ":" if name == "base model" else _arm_style(name, [n for n in names if n != "base model"])
                ax.plot(range(len(values)), 100 * np.asarray(values, dtype=float), style, marker=".",
                        color=_arm_color(name, names), label=_arm_label(name))
        ax.set_title(f"on {category} tokens", fontsize=10)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of attention from supervised rows %")
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def plot_grid_summary(grid_rows: list[dict], path: str | os.PathLike[str]) -> Path:
    """Per arm: IID and OOD accuracy, and flip rate where measured, as means with ± sd across seeds."""
    if not grid_rows:
        raise ValueError("no grid rows to plot")
    labels = [f"{r['arm']}\n({_n_seeds(r)} seed{'s' if _n_seeds(r) != 1 else ''})" if _n_seeds(r) else str(r["arm"])
              for r in grid_rows]
    has_flip = any(r.get("flip_mean") is not None for r in grid_rows)
    x = np.arange(len(grid_rows))
    fig = Figure(figsize=(max(6.0, 1.3 * len(grid_rows)) * (2 if has_flip else 1) * 0.75 + 1, 4.2),
                 layout="constrained")
    axes = fig.subplots(1, 2 if has_flip else 1, squeeze=False)[0]

    def bars(ax: Any, prefix: str, offset: float, width: float, color: str, label: str) -> None:
        keep = [i for i, r in enumerate(grid_rows) if r.get(f"{prefix}_mean") is not None]
        means = [100 * grid_rows[i][f"{prefix}_mean"] for i in keep]
        # No sd (one seed) draws no error bar, rather than one that reads as zero spread.
        sds = [math.nan if grid_rows[i].get(f"{prefix}_sd") is None else 100 * grid_rows[i][f"{prefix}_sd"]
               for i in keep]
        ax.bar(x[keep] + offset, means, width, yerr=sds, capsize=3, color=color, label=label,
               edgecolor="black", linewidth=0.4)
        for i, m, s in zip(keep, means, sds):
            ax.text(x[i] + offset, m + (0 if math.isnan(s) else s) + 1, f"{m:.1f}", ha="center", va="bottom",
                    fontsize=7)

    bars(axes[0], "iid", -0.2, 0.4, "tab:blue", "IID")
    bars(axes[0], "ood", 0.2, 0.4, "tab:orange", "OOD")
    axes[0].set_ylabel("accuracy %")
    axes[0].set_title("Accuracy (mean ± sd across seeds)", fontsize=10)
    if has_flip:
        if any(r.get("flip_same_mean") is not None for r in grid_rows):
            bars(axes[1], "flip", -0.2, 0.4, "tab:red", "flip rate")
            bars(axes[1], "flip_same", 0.2, 0.4, "tab:purple", "same printed lengths")
        else:
            bars(axes[1], "flip", 0.0, 0.6, "tab:red", "flip rate")
        axes[1].set_ylabel("flip rate %")
        axes[1].set_title("Flip rate (lower is better)", fontsize=10)
    for ax in axes:
        ax.set_xticks(x, labels, fontsize=8, rotation=30 if len(grid_rows) > 4 else 0)
        ax.set_ylim(0, 110)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)
