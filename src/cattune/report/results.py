"""Reading the ``results`` dict that ``cattune experiment`` writes as ``results.json``: its arms,
splits, seeds, paired tests and attention blocks.

The baseline is the results' ``reference`` arm ("baseline" unless the experiment config names
another). The paired block is keyed by split for CAT and by ``"<arm>:<split>"`` for any other arm,
always that arm minus the baseline.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

BASELINE, CAT = "baseline", "cat"

# Attention categories in display order; any other category found is shown after these.
# "first_token" is what cattune.diagnostics calls the attention sink.
ATTENTION_CATEGORIES = ("cause", "spurious", "irrelevant", "sink", "first_token", "other")


def _arm_order(names: Iterable[str], reference: str = BASELINE) -> list[str]:
    """The reference arm (the baseline) first, CAT second, then any other arms in their recorded order."""
    names = list(names)
    first = list(dict.fromkeys(n for n in (reference, CAT) if n in names))
    return first + [n for n in names if n not in first]


def _reference(results: Mapping[str, Any]) -> str:
    """The arm every other arm is compared with (config ``reference``; "baseline" unless set)."""
    return results.get("reference") or BASELINE


def _arms(results: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    arms = results.get("arms") or {}
    return {name: arms[name] for name in _arm_order(arms, _reference(results))}


def _splits(results: Mapping[str, Any]) -> list[str]:
    """Evaluated splits: the recorded display order, then any split an arm has that it leaves out."""
    order = list(results.get("splits") or [])
    for arm in _arms(results).values():
        order += [s for s in (arm.get("splits") or {}) if s not in order]
    return [s for s in order if any(_split_stats(arm, s) for arm in _arms(results).values())]


def _split_stats(arm: Mapping[str, Any], split: str) -> Mapping[str, Any] | None:
    stats = (arm.get("splits") or {}).get(split)
    return stats if stats and stats.get("accuracy") is not None else None


def _has_flip(stats: Mapping[str, Any] | None) -> bool:
    return bool(stats) and stats.get("flip_rate") is not None


def _majority(results: Mapping[str, Any], split: str) -> float | None:
    for arm in _arms(results).values():
        stats = _split_stats(arm, split)
        if stats and stats.get("majority_accuracy") is not None:
            return float(stats["majority_accuracy"])
    return None


def _compared_arms(results: Mapping[str, Any]) -> list[str]:
    """Arms compared with the reference arm (CAT first); none without it."""
    arms, ref = _arms(results), _reference(results)
    return [a for a in arms if a != ref] if ref in arms else []


def _paired(results: Mapping[str, Any], arm: str, split: str) -> Mapping[str, Any]:
    paired = results.get("paired") or {}
    return paired.get(split if arm == CAT else f"{arm}:{split}") or {}


def _is_ood(split: str) -> bool:
    return "ood" in split.lower()


def _seeds(results: Mapping[str, Any]) -> list[Any]:
    return list(results.get("seeds") or [])


def _split_n(results: Mapping[str, Any], split: str, key: str) -> int | None:
    """The split's n when every arm evaluated the same number of items, else None."""
    ns = {s.get(key) for a in _arms(results).values() if (s := _split_stats(a, split)) and s.get(key) is not None}
    return ns.pop() if len(ns) == 1 else None


def _attention(block: Mapping[str, Any] | None) -> dict[str, float] | None:
    """Category -> share of a block's ``attention``, or None without a cause share.

    Accepts the shares flat (``{"cause": .., "spurious": ..}``) or nested under ``"share"`` as
    ``cattune.diagnostics.attention_shares`` returns them; non-finite shares (empty sets) are dropped.
    """
    attention = (block or {}).get("attention") or {}
    shares = attention.get("share") if isinstance(attention.get("share"), Mapping) else attention
    flat = {k: float(v) for k, v in shares.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    return flat if "cause" in flat else None


def _path_block(block: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The attention of the positions after the non-causal spans (``diagnostics.path_attention``)."""
    path = ((block or {}).get("attention") or {}).get("path")
    return path if isinstance(path, Mapping) else {}


def _causal_ratio(block: Mapping[str, Any] | None) -> float | None:
    ratio = ((block or {}).get("attention") or {}).get("causal_ratio")
    return float(ratio) if isinstance(ratio, (int, float)) and math.isfinite(ratio) else None
