"""Multi-variant grids: one row per arm with means and standard deviations across seeds, and
their Markdown table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from cattune.report.format import _md_table, _p, _pct, _share
from cattune.report.results import (
    BASELINE,
    _arms,
    _attention,
    _causal_ratio,
    _paired,
    _path_block,
    _reference,
    _seeds,
    _split_stats,
)


def _n_seeds(row: Mapping[str, Any]) -> int | None:
    seeds = row.get("seeds")
    if seeds is None:
        return None
    return len(seeds) if isinstance(seeds, (list, tuple)) else int(seeds)


def _mean_sd(row: Mapping[str, Any], prefix: str) -> str:
    mean, sd = row.get(f"{prefix}_mean"), row.get(f"{prefix}_sd")
    if mean is None:
        return "—"
    return f"{_pct(mean)} ± {_pct(sd)}" if sd is not None else _pct(mean)


def grid_rows(results: Mapping[str, Any], *, iid: str = "test_iid", ood: str = "test_ood") -> list[dict]:
    """One row per arm for :func:`grid_table` and :func:`plot_grid_summary`: mean and sd across seeds
    of IID accuracy, OOD accuracy and OOD flip rate, the paired p-values against the baseline (items
    pooled over seeds), and the attention shares of the first seed."""
    rows = []
    for name, arm in _arms(results).items():
        row: dict[str, Any] = {"arm": name, "seeds": _seeds(results)}
        for key, split, measure in (("iid", iid, "accuracy"), ("ood", ood, "accuracy"), ("flip", ood, "flip_rate"),
                                    ("flip_same", ood, "flip_same_length_rate")):
            per_seed = ((_split_stats(arm, split) or {}).get("per_seed") or {}).values()
            values = [float(v[measure]) for v in per_seed if v.get(measure) is not None]
            row[f"{key}_mean"] = float(np.mean(values)) if values else None
            row[f"{key}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
        if name != _reference(results) and _reference(results) in _arms(results):
            paired = _paired(results, name, ood)
            row["ood_p"] = (paired.get("mcnemar") or {}).get("p_value")
            row["flip_p"] = (paired.get("flip_mcnemar") or {}).get("p_value")
            row["flip_same_p"] = (paired.get("flip_same_length_mcnemar") or {}).get("p_value")
        shares = _attention(arm) or {}
        row["share_cause"], row["share_spurious"] = shares.get("cause"), shares.get("spurious")
        row["causal_ratio"] = _causal_ratio(arm)
        path = _path_block(arm)
        row["path_share"], row["path_max_head"] = path.get("share"), path.get("max_head_share")
        rows.append(row)
    return rows


def grid_table(grid_rows: list[dict], reference: str = BASELINE) -> str:
    """Markdown table of a multi-variant grid: per arm the mean ± sd across seeds of IID accuracy,
    OOD accuracy and flip rate; where the rows carry them, the paired p-values against the
    reference arm and the attention shares."""
    if not grid_rows:
        raise ValueError("no grid rows to tabulate")
    header = ["arm", "seeds", "IID acc %", "OOD acc %", "flip %"]
    extras = [(key, title, fmt) for key, title, fmt in (
        ("flip_same_mean", "flip % (same length)", None),
        ("ood_p", f"OOD p vs {reference}", _p), ("flip_p", f"flip p vs {reference}", _p),
        ("flip_same_p", "same-length flip p", _p),
        ("share_cause", "share cause", _share), ("share_spurious", "share spurious", _share),
        ("causal_ratio", "causal ratio", lambda v: f"{v:.2f}"),
        ("path_share", "later rows on non-causal", _share),
        ("path_max_head", "same, top head", _share)) if any(r.get(key) is not None for r in grid_rows)]
    rows = []
    for r in grid_rows:
        row = [str(r["arm"]), str(_n_seeds(r) or "—"), _mean_sd(r, "iid"), _mean_sd(r, "ood"), _mean_sd(r, "flip")]
        row += [_mean_sd(r, "flip_same") if fmt is None else fmt(r[key]) if r.get(key) is not None else "—"
                for key, _, fmt in extras]
        rows.append(row)
    table = _md_table(header + [title for _, title, _ in extras], rows)
    notes = "Cells: mean ± standard deviation across seeds (no ± with one seed). Flip: lower is better."
    if any(key == "flip_same_mean" for key, _, _ in extras):
        notes += (" Same length: the spurious values redrawn keeping each one's number of characters, so every"
                  " token keeps its position.")
    if any(key in ("ood_p", "flip_p") for key, _, _ in extras):
        notes += f" p: exact McNemar, arm vs {reference}, items pooled over seeds."
    if any(key.startswith("share") or key == "causal_ratio" for key, _, _ in extras):
        notes += " Attention: answer rows, mean over layers and heads, first seed (a diagnostic)."
    if any(key.startswith("path") for key, _, _ in extras):
        notes += (" Later rows: the share that every position after the first spurious or irrelevant token"
                  " puts on those tokens (mean over heads, and the head that reads them most), mean over layers.")
    return table + "\n\n" + notes
