"""Formatting for the report's text: arm names, percentages, attention shares, p-values,
intervals, table cells and Markdown tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cattune.report.results import BASELINE, CAT


def _the(reference: str) -> str:
    return "the baseline" if reference == BASELINE else reference


def _arm_label(arm: str) -> str:
    return "CAT" if arm == CAT else arm


def _pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}"


def _share(x: float) -> str:
    # Attention shares on a few tokens can be well under 1%: keep two significant places there.
    return f"{100 * x:.2f}%" if abs(x) < 0.01 else f"{100 * x:.1f}%"


def _p(p: float) -> str:
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


def seed_t_p(seed_test: Mapping[str, Any]) -> str:
    """"paired t p = ..." of :func:`cattune.stats.paired_seed_test`, or why there is none."""
    p = seed_test["t_test_p_value"]
    return "paired t undefined (the same difference at every seed)" if p is None else f"paired t p = {_p(p)}"


def _interval(low: Any, high: Any, signed: bool = False) -> str:
    if low is None or high is None:
        return ""
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return f"[{fmt.format(100 * low)}, {fmt.format(100 * high)}]"


def _cell(value: float, low: Any, high: Any, unit: str = "") -> str:
    return f"{_pct(value)}{unit} {_interval(low, high)}".rstrip()


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _bootstrap_p(boot: Mapping[str, Any]) -> str:
    """"= p", or "< bound" when no resample fell on the far side of zero (the test's resolution)."""
    if boot["p_value"] == 0:
        return f"< {_p(2 / boot['n_resamples'])}"
    return f"= {_p(boot['p_value'])}"


def _error_interval(low: Any, high: Any) -> str:
    return f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
