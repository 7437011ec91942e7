"""Spurious flip rate: how often an answer changes when only non-causal values change.

For each test item a perturbation rewrites the prompt keeping the causes fixed (for STG: redraw the
spurious values, :func:`cattune.data.stg.redraw_spurious`); the flip rate is the share of items
whose extracted answer differs between the original and the perturbed prompt. A model that reads
only the causes scores 0%, whatever its accuracy. Attention mass can be moved off a token while
the token is still used (METHOD.md section 9); this measures use directly.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cattune.checkers import Checker, get_checker
from cattune.data.records import DataError, Record
from cattune.evaluate import generate
from cattune.files import atomic_write_text
from cattune.stats import wilson_interval

logger = logging.getLogger(__name__)

Perturbation = Callable[[str, random.Random], str]


@dataclass
class FlipResult:
    """Flip rate over ``n`` items with its Wilson 95% interval; ``per_item`` holds both prompts and
    both predictions of every item."""

    n: int
    flips: int
    rate: float
    ci_low: float
    ci_high: float
    per_item: list[dict[str, Any]] = field(repr=False)
    unchanged_prompts: int = 0
    seed: int = 0
    per_item_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "flips": self.flips, "rate": self.rate, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "confidence": 0.95, "interval": "wilson", "unchanged_prompts": self.unchanged_prompts,
                "seed": self.seed, "per_item": self.per_item_path}


def answers_differ(checker: Checker, original: str, perturbed: str) -> bool:
    """Whether two extracted answers are different answers under the task's own matching rule
    ("84" and "84.0" are the same numeric answer; two empty answers are not a flip)."""
    if original == perturbed:
        return False
    if original and perturbed and checker.answer_matches(perturbed, original):
        return False
    return True


def perturb_records(records: Sequence[Record], perturb: Perturbation, *, seed: int = 0) -> list[str]:
    """The perturbed prompt of every record, drawn from one generator seeded with ``seed`` (the same
    seed gives the same perturbations)."""
    rng = random.Random(seed)
    out = []
    for index, rec in enumerate(records):
        try:
            out.append(perturb(rec.input, rng))
        except (ValueError, KeyError) as exc:
            raise DataError(rec.source or "<records>", rec.line or index + 1, f"cannot perturb this prompt: {exc}",
                            "the flip rate needs prompts in the perturbation's format (e.g. STG tables)") from None
    return out


def flip_rate(
    model: Any,
    tokenizer: Any,
    records: Sequence[Record],
    perturb: Perturbation,
    *,
    task: str,
    seed: int = 0,
    batch_size: int = 16,
    original_generations: Sequence[str] | None = None,
    per_item_path: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> FlipResult:
    """Share of items whose answer changes when ``perturb`` rewrites the prompt.

    ``original_generations`` (from an evaluation of the same records with the same model) saves
    generating the originals again. ``per_item_path`` receives one JSON line per item.
    """
    if not records:
        raise ValueError("no records for the flip rate")
    if original_generations is not None and len(original_generations) != len(records):
        raise ValueError(f"original_generations has {len(original_generations)} entries for {len(records)} records")
    checker = get_checker(task)
    perturbed_prompts = perturb_records(records, perturb, seed=seed)
    kwargs = dict(max_new_tokens=checker.max_new_tokens, batch_size=batch_size, stop_strings=checker.stop_strings,
                  stop_pattern=checker.stop_pattern, progress=progress)
    if original_generations is None:
        original_generations = generate(model, tokenizer, [r.input for r in records], **kwargs)
    perturbed_generations = generate(model, tokenizer, perturbed_prompts, **kwargs)
    per_item: list[dict[str, Any]] = []
    flips = unchanged = 0
    for index, (rec, new_prompt, gen_a, gen_b) in enumerate(
        zip(records, perturbed_prompts, original_generations, perturbed_generations)
    ):
        ans_a, ans_b = checker.extract(gen_a), checker.extract(gen_b)
        flipped = answers_differ(checker, ans_a, ans_b)
        flips += flipped
        unchanged += new_prompt == rec.input
        per_item.append({"index": index, "line": rec.line, "original_prompt": rec.input,
                         "perturbed_prompt": new_prompt, "original_generation": gen_a,
                         "perturbed_generation": gen_b, "original_answer": ans_a, "perturbed_answer": ans_b,
                         "flipped": flipped})
    if unchanged:
        logger.warning("%d of %d perturbed prompts are identical to the original; they cannot flip",
                       unchanged, len(records))
    n = len(records)
    low, high = wilson_interval(flips, n)
    written = None
    if per_item_path is not None:
        text = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in per_item)
        written = str(atomic_write_text(Path(per_item_path), text))
    logger.info("flip rate %.1f%% [%.1f, %.1f] (n=%d)", 100 * flips / n, 100 * low, 100 * high, n)
    return FlipResult(n=n, flips=flips, rate=flips / n, ci_low=low, ci_high=high, per_item=per_item,
                      unchanged_prompts=unchanged, seed=seed, per_item_path=written)


def flips_by_token_change(per_item: Sequence[Mapping[str, Any]], tokenizer: Any) -> dict[str, dict[str, Any]]:
    """Flips grouped by how many tokens the perturbation added to the prompt (``"0"``, ``"+1"``,
    ``"-2"``, ...): per group the items, the flips, and each answer change (``"Low Risk -> High
    Risk": 12``).

    Redrawing a value can change its token count ("9" vs "10"), which moves every later token. A
    model that reads none of the redrawn tokens can still flip there; flips only where the count
    changes, and all in one direction per sign, point to a shortcut through the prompt's length.
    """
    items = list(per_item)
    if not items:
        return {}
    encode = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]  # noqa: E731
    before = encode([it["original_prompt"] for it in items])
    after = encode([it["perturbed_prompt"] for it in items])
    groups: dict[int, dict[str, Any]] = {}
    for it, a, b in zip(items, before, after):
        group = groups.setdefault(len(b) - len(a), {"n": 0, "flips": 0, "changes": Counter()})
        group["n"] += 1
        if it["flipped"]:
            group["flips"] += 1
            group["changes"][f"{it['original_answer']} -> {it['perturbed_answer']}"] += 1
    return _token_change_table(groups)


def pool_token_changes(tables: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """:func:`flips_by_token_change` tables (of several seeds) summed group by group."""
    groups: dict[int, dict[str, Any]] = {}
    for table in tables:
        for key, group in table.items():
            into = groups.setdefault(int(key), {"n": 0, "flips": 0, "changes": Counter()})
            into["n"] += group["n"]
            into["flips"] += group["flips"]
            into["changes"].update(group["changes"])
    return _token_change_table(groups)


def _token_change_table(groups: Mapping[int, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    # Keys "-1", "0", "+2" in order of the change; changes most common first; JSON-ready.
    return {f"{d:+d}" if d else "0": {**g, "rate": g["flips"] / g["n"], "changes": dict(g["changes"].most_common())}
            for d, g in sorted(groups.items())}
