"""The experiment report: a comparison table, findings computed from the numbers, and PNG plots.

Input is the ``results`` dict that ``cattune experiment`` writes as ``results.json``. Every
claim is taken from the recorded numbers: accuracies with their n and 95% intervals, the
majority-class baseline of each split, the paired test of each arm (CAT first) against the
baseline, and the flip rate (share of answers that change when only the spurious values change;
lower is better). Attention shares are reported as a diagnostic only: behaviour is the measure.

The baseline is the results' ``reference`` arm ("baseline" unless the experiment config names
another). The paired block is keyed by split for CAT and by ``"<arm>:<split>"`` for any other arm,
always that arm minus the baseline; in ``mcnemar`` (``cattune.stats.mcnemar_exact``), ``b01`` counts
items only the arm got right and ``b10`` items only the baseline got right (checked against the
sign of the difference before being named).

Plots are drawn on bare ``matplotlib.figure.Figure`` objects (Agg rendering, no pyplot state), so
the module works without a display and leaves no figures open.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from cattune.files import atomic_write_text

logger = logging.getLogger(__name__)

ALPHA = 0.05  # significance level of every verdict in the findings
BASELINE, CAT = "baseline", "cat"

# Attention categories in display order; any other category found is shown after these.
# "first_token" is what cattune.diagnostics calls the attention sink.
ATTENTION_CATEGORIES = ("cause", "spurious", "irrelevant", "sink", "first_token", "other")
_CATEGORY_COLORS = {"cause": "tab:green", "spurious": "tab:red", "irrelevant": "tab:gray",
                    "sink": "tab:purple", "first_token": "tab:purple", "other": "tab:brown"}
_ARM_COLORS = {BASELINE: "tab:blue", CAT: "tab:orange", "base model": "tab:gray"}
_EXTRA_COLORS = ("tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
_DPI = 120

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


# ---------------------------------------------------------------------------------------------
# Reading the results dict


def _arm_order(names: Iterable[str], reference: str = BASELINE) -> list[str]:
    """The reference arm (the baseline) first, CAT second, then any other arms in their recorded order."""
    names = list(names)
    first = list(dict.fromkeys(n for n in (reference, CAT) if n in names))
    return first + [n for n in names if n not in first]


def _reference(results: Mapping[str, Any]) -> str:
    """The arm every other arm is compared with (config ``reference``; "baseline" unless set)."""
    return results.get("reference") or BASELINE


def _the(reference: str) -> str:
    return "the baseline" if reference == BASELINE else reference


def _arm_label(arm: str) -> str:
    return "CAT" if arm == CAT else arm


def _arm_color(arm: str, arms: Sequence[str]) -> str:
    if arm in _ARM_COLORS:
        return _ARM_COLORS[arm]
    others = [a for a in arms if a not in _ARM_COLORS]
    return _EXTRA_COLORS[others.index(arm) % len(_EXTRA_COLORS)] if arm in others else "black"


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


# ---------------------------------------------------------------------------------------------
# Formatting


def _pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}"


def _share(x: float) -> str:
    # Attention shares on a few tokens can be well under 1%: keep two significant places there.
    return f"{100 * x:.2f}%" if abs(x) < 0.01 else f"{100 * x:.1f}%"


def _p(p: float) -> str:
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


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


# ---------------------------------------------------------------------------------------------
# Paired comparisons


@dataclass(frozen=True)
class Comparison:
    """An arm against the baseline on one measure of one split."""

    verdict: str  # "better", "worse", "not significantly different" or "undetermined"
    difference: float  # arm minus baseline, as a fraction
    ci: tuple[float, float] | None  # 95% interval of the difference
    p_value: float | None
    basis: str  # how the verdict was reached, for the sentence


def _discordant_text(mcnemar: Mapping[str, Any], difference: float, arm: str, reference: str = BASELINE) -> str:
    b01, b10 = mcnemar.get("b01"), mcnemar.get("b10")
    if b01 is None or b10 is None:
        return ""
    # Name the counts only when they agree with the difference, so a flipped convention upstream
    # cannot make the report attribute wins to the wrong arm.
    if (b01 - b10) * difference < 0:
        logger.warning("McNemar counts b01=%s b10=%s disagree with the difference %+.4f; not naming them",
                       b01, b10, difference)
        return ""
    return f"; {b01} items only {_arm_label(arm)} answered correctly, {b10} only {_the(reference)}"


def compare_arms(results: Mapping[str, Any], split: str, measure: str = "accuracy",
                 arm: str = CAT) -> Comparison | None:
    """``arm`` vs the baseline on ``split`` for ``measure`` ("accuracy", higher is better, or
    "flip_rate", lower is better). None when either arm lacks the measure on that split.

    The verdict uses, in order: the exact McNemar p-value; the interval of the paired difference;
    the two arms' own intervals (non-overlap is a conservative test). Significance is p < ALPHA.
    """
    arms, ref = _arms(results), _reference(results)
    if ref not in arms or arm not in arms or arm == ref:
        return None
    base, cat = _split_stats(arms[ref], split), _split_stats(arms[arm], split)
    if not base or not cat or base.get(measure) is None or cat.get(measure) is None:
        return None
    higher_is_better = measure == "accuracy"
    paired = _paired(results, arm, split)
    mcnemar = paired.get("mcnemar" if measure == "accuracy" else "flip_mcnemar") or {}
    if measure == "accuracy" and paired.get("accuracy_difference") is not None:
        difference = float(paired["accuracy_difference"])
    else:
        difference = float(cat[measure]) - float(base[measure])
    ci = None
    if measure == "accuracy" and paired.get("diff_ci_low") is not None and paired.get("diff_ci_high") is not None:
        ci = (float(paired["diff_ci_low"]), float(paired["diff_ci_high"]))

    p = mcnemar.get("p_value")
    low_key, high_key = ("ci_low", "ci_high") if measure == "accuracy" else ("flip_ci_low", "flip_ci_high")
    bounds = [base.get(low_key), base.get(high_key), cat.get(low_key), cat.get(high_key)]
    if p is not None:
        significant = p < ALPHA
        basis = f"exact McNemar p = {_p(p)}"
        if measure == "accuracy":
            basis += _discordant_text(mcnemar, difference, arm, ref)
    elif ci is not None:
        significant = ci[0] > 0 or ci[1] < 0
        basis = "the paired interval " + ("excludes" if significant else "includes") + " 0; no McNemar test recorded"
    elif None not in bounds:
        significant = bounds[1] < bounds[2] or bounds[3] < bounds[0]
        basis = ("the two 95% intervals " + ("do not overlap" if significant else "overlap")
                 + "; no paired test recorded")
    else:
        return Comparison("undetermined", difference, ci, None, "no test or interval recorded")
    if not significant or difference == 0:
        verdict = "not significantly different"
    else:
        verdict = "better" if (difference > 0) == higher_is_better else "worse"
    return Comparison(verdict, difference, ci, p, basis)


# ---------------------------------------------------------------------------------------------
# Table


def _split_n(results: Mapping[str, Any], split: str, key: str) -> int | None:
    """The split's n when every arm evaluated the same number of items, else None."""
    ns = {s.get(key) for a in _arms(results).values() if (s := _split_stats(a, split)) and s.get(key) is not None}
    return ns.pop() if len(ns) == 1 else None


def _table_notes(results: Mapping[str, Any]) -> list[str]:
    methods = {s.get("ci_method") for a in _arms(results).values() for sp in _splits(results)
               if (s := _split_stats(a, sp))} - {None}
    described = {"wilson": "Wilson score interval over the n test items",
                 "seeds": "t interval across seeds (the value is the mean over seeds)"}
    notes = ["Cells: percentage [95% interval]."]
    if methods:
        notes.append("Intervals: " + "; ".join(described.get(m, f"method '{m}'") for m in sorted(methods)) + ".")
    if any(_has_flip(_split_stats(a, sp)) for a in _arms(results).values() for sp in _splits(results)):
        notes.append("Flip: share of answers that change when only the spurious values change (lower is better).")
    if _compared_arms(results):
        if results.get("paired"):
            notes.append(f"Arm - {_reference(results)}: difference in points [95% interval of the paired difference], "
                         "exact McNemar p.")
            if results.get("pooling"):
                notes.append(f"Paired tests: {results['pooling']}.")
        else:
            notes.append(f"Arm - {_reference(results)}: difference in points; no paired test was recorded.")
    return notes


def comparison_table(results: dict) -> str:
    """The Markdown comparison table (rows = arms, majority class, paired difference; columns =
    accuracy and, where measured, flip rate per split), followed by notes on the intervals."""
    arms = _arms(results)
    splits = _splits(results)
    if not arms or not splits:
        raise ValueError("results has no arms or no evaluated splits to tabulate")
    columns: list[tuple[str, str]] = []  # (split, measure)
    header = ["arm"]
    for split in splits:
        n = _split_n(results, split, "n")
        columns.append((split, "accuracy"))
        header.append(f"{split} acc %" + (f" (n={n})" if n is not None else ""))
        if any(_has_flip(_split_stats(a, split)) for a in arms.values()):
            flip_n = _split_n(results, split, "flip_n")
            columns.append((split, "flip_rate"))
            header.append(f"{split} flip %" + (f" (n={flip_n})" if flip_n is not None else ""))

    rows: list[list[str]] = []
    for name, arm in arms.items():
        row = [_arm_label(name)]
        for split, measure in columns:
            stats = _split_stats(arm, split)
            if not stats or stats.get(measure) is None:
                row.append("—")
                continue
            if measure == "accuracy":
                cell = _cell(stats["accuracy"], stats.get("ci_low"), stats.get("ci_high"))
                n_key = "n"
            else:
                cell = _cell(stats["flip_rate"], stats.get("flip_ci_low"), stats.get("flip_ci_high"))
                n_key = "flip_n"
            if _split_n(results, split, n_key) is None and stats.get(n_key) is not None:
                cell += f" (n={stats[n_key]})"
            row.append(cell)
        rows.append(row)

    majority = ["majority class"]
    for split, measure in columns:
        value = _majority(results, split) if measure == "accuracy" else None
        majority.append(_pct(value) if value is not None else "—")
    rows.append(majority)

    for arm in _compared_arms(results):
        paired_row = [f"{_arm_label(arm)} - {_reference(results)}"]
        for split, measure in columns:
            comparison = compare_arms(results, split, measure, arm)
            if comparison is None:
                paired_row.append("—")
                continue
            cell = f"{100 * comparison.difference:+.1f}"
            if comparison.ci is not None:
                cell += " " + _interval(*comparison.ci, signed=True)
            if comparison.p_value is not None:
                cell += f", p = {_p(comparison.p_value)}"
            paired_row.append(cell)
        if any(cell != "—" for cell in paired_row[1:]):
            rows.append(paired_row)
    return _md_table(header, rows) + "\n\n" + "\n".join(_table_notes(results))


# ---------------------------------------------------------------------------------------------
# Findings


def _seed_sentence(results: Mapping[str, Any]) -> str | None:
    seeds = _seeds(results)
    if not seeds:
        return None
    if len(seeds) == 1:
        return (f"One seed per arm ({seeds[0]}): seed-to-seed variance is unknown, so the intervals "
                "cover only the sampling of test items.")
    return f"{len(seeds)} seeds per arm ({', '.join(str(s) for s in seeds)})."


def _accuracy_sentence(results: Mapping[str, Any], split: str, arm: str, c: Comparison) -> str:
    arms, ref = _arms(results), _reference(results)
    base, other = _split_stats(arms[ref], split), _split_stats(arms[arm], split)
    assert base and other  # compare_arms returned a comparison, so both exist
    detail = f"difference {100 * c.difference:+.1f} points"
    if c.ci is not None:
        detail += f", 95% CI {_interval(*c.ci, signed=True)}"
    n = _split_n(results, split, "n")
    seeds = _seeds(results)
    if n is not None:
        # Paired tests pool the items of every seed: say so, or "n = 400" undersells the counts before it.
        detail += f"; {c.basis}; n = {n}" + (f" items x {len(seeds)} seeds" if len(seeds) > 1 else "")
    else:
        detail += f"; {c.basis}"
    if seed_test := _paired(results, arm, split).get("seeds_paired"):
        detail += (f"; per seed ({seed_test['n']} pairs of runs): mean difference "
                   f"{100 * seed_test['mean_difference']:+.1f} points, paired t p = {_p(seed_test['t_test_p_value'])}")
    label = _arm_label(arm)
    head = f"{label} vs {ref} on {split}: {_pct(other['accuracy'])}% vs {_pct(base['accuracy'])}% ({detail})"
    if c.verdict == "undetermined":
        return head + ": no claim can be made."
    return head + f": {label} is {c.verdict}."


def _majority_sentences(results: Mapping[str, Any]) -> list[str]:
    out, checked = [], 0
    for split in _splits(results):
        majority = _majority(results, split)
        if majority is None:
            continue
        for name, arm in _arms(results).items():
            stats = _split_stats(arm, split)
            if not stats:
                continue
            checked += 1
            acc, low = stats["accuracy"], stats.get("ci_low")
            label = f"{_arm_label(name)} on {split} ({_pct(acc)}%)"
            if acc <= majority:
                out.append(f"{label} is not above the majority-class baseline ({_pct(majority)}%).")
            elif low is not None and low <= majority:
                out.append(f"{label} is not clearly above the majority-class baseline ({_pct(majority)}%): "
                           "its 95% interval reaches it.")
    if checked and not out:
        out.append("Every arm is above the majority-class baseline on every split (95% intervals clear of it).")
    return out


def _flip_sentences(results: Mapping[str, Any]) -> list[str]:
    out = []
    arms = _arms(results)
    for split in _splits(results):
        with_flip = {name: s for name, a in arms.items() if _has_flip(s := _split_stats(a, split))}
        if not with_flip:
            continue
        parts = [f"{_arm_label(name)} {_cell(s['flip_rate'], s.get('flip_ci_low'), s.get('flip_ci_high'), '%')}"
                 for name, s in with_flip.items()]
        out.append(f"Flip rate on {split} (share of answers that change when only the spurious values "
                   f"change; lower is better): " + " vs ".join(parts) + ".")
        meaning = {"better": "its answers depend on the spurious values less often",
                   "worse": "its answers depend on the spurious values more often",
                   "not significantly different": "no detectable change in reliance on the spurious values"}
        for arm in _compared_arms(results):
            c = compare_arms(results, split, "flip_rate", arm)
            if c is None:
                continue
            head = (f"{_arm_label(arm)} vs {_reference(results)} flip rate on {split}: "
                    f"difference {100 * c.difference:+.1f} points")
            if c.verdict == "undetermined":
                out.append(f"{head} (no test recorded): no claim can be made.")
            else:
                basis = c.basis
                if seed_test := _paired(results, arm, split).get("flip_seeds_paired"):
                    basis += f"; per seed ({seed_test['n']} pairs of runs): paired t p = {_p(seed_test['t_test_p_value'])}"
                out.append(f"{head} ({basis}): {_arm_label(arm)} is {c.verdict} ({meaning[c.verdict]}).")
        # A low flip rate is only evidence of reading the causes if the model reads its input at all.
        majority = _majority(results, split)
        lowest = min(s["flip_rate"] for s in with_flip.values())
        for name, s in with_flip.items():
            low = s["accuracy"] if s.get("ci_low") is None else s["ci_low"]
            if majority is not None and low <= majority and s["flip_rate"] == lowest:
                out.append(f"{_arm_label(name)}'s flip rate on {split} says little: its accuracy is not clearly "
                           "above the majority class, and a model that ignores its input never flips.")
    return out


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


def _attention_sentences(results: Mapping[str, Any], verdicts: Mapping[str, list[str]]) -> list[str]:
    arms = _arms(results)
    ref = _reference(results)
    base = _attention(arms.get(ref))
    cat = _attention(arms.get(CAT))
    before = _attention(results.get("base_model"))
    if not (base and cat) or ref == CAT:
        return []
    out = []
    phrases = []
    for category, label in (("cause", "the causes"), ("spurious", "the spurious values")):
        if base.get(category) is None or cat.get(category) is None:
            continue
        b, c = float(base[category]), float(cat[category])
        verb = "raised" if c > b else "lowered" if c < b else "left unchanged"
        phrases.append(f"{verb} the share of attention on {label} from {_share(b)} to {_share(c)}")
    if not phrases:
        return []
    sentence = f"Compared with {_the(ref)}, CAT " + ", and ".join(phrases)
    if before is not None:
        known = [f"{k} {_share(float(before[k]))}" for k in ("cause", "spurious") if before.get(k) is not None]
        sentence += f" (the model before training: {', '.join(known)})"
    out.append(sentence + ".")

    # Attention moving towards the causes is the mechanism CAT aims at; say plainly when the
    # behavioural measures on the shifted splits did not follow.
    moved = cat["cause"] > base["cause"]
    if moved and cat.get("spurious") and base.get("spurious"):
        moved = cat["cause"] / cat["spurious"] > base["cause"] / base["spurious"]
    judged = verdicts["accuracy"] + verdicts["flip_rate"]
    if moved and judged and "better" not in judged:
        out.append("Attention moved towards the causes, but behaviour did not follow: CAT is not better "
                   f"than {_the(ref)} on any OOD accuracy or flip rate measured.")
    elif moved and "better" in judged and "worse" in judged:
        out.append("Attention moved towards the causes, and behaviour is mixed: CAT is better on some "
                   "measures and worse on others.")
    out.append("Attention is a diagnostic, not the measure: a model can keep attention off a token and "
               "still use its value, so accuracy and flip rate decide.")
    return out


def findings(results: dict) -> list[str]:
    """Short sentences computed from the numbers: seeds, CAT vs baseline per split (better, worse
    or not significantly different at p < 0.05), the majority-class check, flip rates, attention."""
    arms = _arms(results)
    out: list[str] = []
    if seed := _seed_sentence(results):
        out.append(seed)
    if not arms:
        out.append("No arm was run.")
    elif len(arms) == 1:
        out.append(f"Only the {_arm_label(next(iter(arms)))} arm was run: no comparison is made.")
    elif (ref := _reference(results)) not in arms:
        missing = "No baseline arm" if ref == BASELINE else f"The reference arm {ref} is not"
        out.append(f"{missing} among {', '.join(_arm_label(a) for a in arms)}: no comparison is made.")
    # CAT's verdicts on the OOD splits (all splits when none is named OOD) feed the attention caveat.
    ood = [s for s in _splits(results) if _is_ood(s)] or _splits(results)
    verdicts: dict[str, list[str]] = {"accuracy": [], "flip_rate": []}
    for arm in _compared_arms(results):
        for split in _splits(results):
            c = compare_arms(results, split, "accuracy", arm)
            if c is not None:
                out.append(_accuracy_sentence(results, split, arm, c))
            if arm == CAT and split in ood:
                for measure in verdicts:
                    judged = c if measure == "accuracy" else compare_arms(results, split, measure, arm)
                    if judged is not None and judged.verdict != "undetermined":
                        verdicts[measure].append(judged.verdict)
    out += _majority_sentences(results)
    out += _flip_sentences(results)
    out += _numeric_error_sentences(results)
    out += _attention_sentences(results, verdicts)
    return out


# ---------------------------------------------------------------------------------------------
# Plots


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


# ---------------------------------------------------------------------------------------------
# Multi-variant grids


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


def token_change_table(results: Mapping[str, Any], *, split: str = "test_ood", kind: str = "flip") -> str | None:
    """Markdown table of each arm's flips on ``split`` grouped by whether the redraw kept, added or
    removed tokens (items pooled over seeds), with the most common answer change of each group;
    None when no arm has the breakdown."""
    rows = []
    for name, arm in _arms(results).items():
        table = (_split_stats(arm, split) or {}).get(f"{kind}_by_token_change")
        if not table:
            continue
        cells = []
        for keep in (lambda d: d == 0, lambda d: d > 0, lambda d: d < 0):  # the table's three columns
            groups = [g for key, g in table.items() if keep(int(key))]
            n, flips = sum(g["n"] for g in groups), sum(g["flips"] for g in groups)
            if not n:
                cells.append("—")
                continue
            changes: Counter[str] = Counter()
            for g in groups:
                changes.update(g["changes"])
            cell = f"{_pct(flips / n)} ({flips}/{n})"
            if changes:
                top, count = changes.most_common(1)[0]
                cell += f"; {count} of them {top}"
            cells.append(cell)
        rows.append([str(name)] + cells)
    if not rows:
        return None
    return (_md_table(["arm", "token count unchanged", "more tokens", "fewer tokens"], rows)
            + f"\n\nFlip rate on {split} (flips/items, pooled over seeds) by how the redraw changed the prompt's "
            "token count (e.g. a spurious value redrawn from 9 to 10). Flips where the count changed, all in one "
            "direction, and none where it did not, mean the answer follows the prompt's length, not the values.")


def _bootstrap_p(boot: Mapping[str, Any]) -> str:
    """"= p", or "< bound" when no resample fell on the far side of zero (the test's resolution)."""
    if boot["p_value"] == 0:
        return f"< {_p(2 / boot['n_resamples'])}"
    return f"= {_p(boot['p_value'])}"


def _error_interval(low: Any, high: Any) -> str:
    return f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""


def numeric_error_table(results: Mapping[str, Any]) -> str | None:
    """Markdown table of each arm's mean absolute error per split (numeric tasks such as STG_H), with
    the paired difference to the baseline; None when no split measured it."""
    arms = _arms(results)
    splits = [sp for sp in _splits(results)
              if any((_split_stats(a, sp) or {}).get("mean_absolute_error") is not None for a in arms.values())]
    if not splits:
        return None
    rows = []
    for name, arm in arms.items():
        row = [_arm_label(name)]
        for split in splits:
            st = _split_stats(arm, split) or {}
            if st.get("mean_absolute_error") is None:
                row.append("—")
                continue
            cell = f"{st['mean_absolute_error']:.2f}" + _error_interval(st.get("mae_ci_low"), st.get("mae_ci_high"))
            if st.get("numeric_answer_share") is not None and st["numeric_answer_share"] < 1:
                cell += f" ({_pct(st['numeric_answer_share'])}% with a number)"
            row.append(cell)
        rows.append(row)
    medians = [next((st["median_answer_error"] for a in arms.values()
                     if (st := _split_stats(a, sp) or {}).get("median_answer_error") is not None), None) for sp in splits]
    if any(m is not None for m in medians):
        rows.append(["median answer"] + ["—" if m is None else f"{m:.2f}" for m in medians])
    for arm in _compared_arms(results):
        row = [f"{_arm_label(arm)} - {_reference(results)}"]
        for split in splits:
            boot = _paired(results, arm, split).get("absolute_error_bootstrap")
            row.append("—" if not boot else f"{boot['mean_difference']:+.2f}"
                       + _error_interval(boot["ci_low"], boot["ci_high"]) + f", p {_bootstrap_p(boot)}")
        rows.append(row)
    notes = ("Mean absolute error of the answer as a number (lower is better), over the answers that hold a "
             "number; [95% interval: t over " + ("seeds" if len(_seeds(results)) > 1 else "items") + "]. "
             "Median answer: the error of answering every item with the split's median target (a model near "
             "it has learned nothing usable). "
             f"Arm - {_reference(results)}: mean paired difference over the items where both answered with a number "
             "(pooled over seeds) [95% paired bootstrap interval], bootstrap p.")
    return _md_table(["arm"] + [f"{sp} abs. error" for sp in splits], rows) + "\n\n" + notes


def _numeric_error_sentences(results: Mapping[str, Any]) -> list[str]:
    out = []
    arms = _arms(results)
    for name, arm in arms.items():
        for split in _splits(results):
            st = _split_stats(arm, split) or {}
            mae, median = st.get("mean_absolute_error"), st.get("median_answer_error")
            if mae is None or median is None:
                continue
            high = mae if st.get("mae_ci_high") is None else st["mae_ci_high"]
            if high >= median:
                out.append(f"{_arm_label(name)}'s mean absolute error on {split} ({mae:.2f}) is not clearly below "
                           f"that of answering every item with the median target ({median:.2f}).")
    for arm in _compared_arms(results):
        for split in _splits(results):
            boot = _paired(results, arm, split).get("absolute_error_bootstrap")
            base, other = _split_stats(arms[_reference(results)], split) or {}, _split_stats(arms[arm], split) or {}
            if not boot or base.get("mean_absolute_error") is None or other.get("mean_absolute_error") is None:
                continue
            significant = boot["p_value"] < ALPHA and boot["mean_difference"] != 0
            verdict = ("not significantly different" if not significant
                       else "better" if boot["mean_difference"] < 0 else "worse")
            basis = f"paired bootstrap p {_bootstrap_p(boot)}; {boot['n']} items where both answered with a number"
            if seed_test := _paired(results, arm, split).get("absolute_error_seeds_paired"):
                basis += f"; per seed ({seed_test['n']} pairs of runs): paired t p = {_p(seed_test['t_test_p_value'])}"
            out.append(f"{_arm_label(arm)} vs {_reference(results)} mean absolute error on {split}: "
                       f"{other['mean_absolute_error']:.2f} vs {base['mean_absolute_error']:.2f} (difference "
                       f"{boot['mean_difference']:+.2f}{_error_interval(boot['ci_low'], boot['ci_high'])}; {basis}): "
                       f"{_arm_label(arm)} is {verdict}.")
    return out


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


# ---------------------------------------------------------------------------------------------
# report.md


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
    parts = []
    if effective.get("attn_weight") == 0:
        parts.append("attention term off")
    elif effective:
        described = [f"{key.removeprefix('attn_')} {effective[key]}"
                     for key in ("attn_loss_type", "attn_alpha", "attn_weight", "attn_schedule") if key in effective]
        if described:
            parts.append("attention term: " + ", ".join(described))
    parts += [f"{k}={v}" for k, v in overrides.items() if not k.startswith("attn_")]
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


def _attention_table(results: Mapping[str, Any]) -> str | None:
    sources = {"model before training": results.get("base_model"),
               **{_arm_label(n): a for n, a in _arms(results).items()}}
    blocks = {name: (shares, _causal_ratio(block), _path_block(block)) for name, block in sources.items()
              if (shares := _attention(block))}
    if not blocks:
        return None
    found = {k for shares, _, _ in blocks.values() for k in shares}
    categories = [c for c in ATTENTION_CATEGORIES if c in found] + sorted(found - set(ATTENTION_CATEGORIES))
    with_ratio = any(ratio is not None for _, ratio, _ in blocks.values())
    with_path = any(path.get("share") is not None for _, _, path in blocks.values())
    rows = []
    for name, (shares, ratio, path) in blocks.items():
        row = [name] + [_share(shares[c]) if c in shares else "—" for c in categories]
        if with_ratio:
            row.append(f"{ratio:.2f}" if ratio is not None else "—")
        if with_path:
            row.append(f"{_share(path['share'])} / {_share(path['max_head_share'])}" if path.get("share") is not None
                       else "—")
        rows.append(row)
    header = ["attention share on", *categories] + (["causal ratio"] if with_ratio else [])
    header += ["later rows on non-causal (mean head / top head)"] if with_path else []
    return _md_table(header, rows)


def _per_seed_table(results: Mapping[str, Any]) -> str | None:
    if len(_seeds(results)) < 2:
        return None
    splits = _splits(results)
    rows = []
    for name, arm in _arms(results).items():
        seeds = []
        for split in splits:
            for seed in (_split_stats(arm, split) or {}).get("per_seed") or {}:
                if seed not in seeds:
                    seeds.append(seed)
        for seed in seeds:
            row = [_arm_label(name), str(seed)]
            for split in splits:
                entry = ((_split_stats(arm, split) or {}).get("per_seed") or {}).get(seed) or {}
                cell = _pct(entry["accuracy"]) if entry.get("accuracy") is not None else "—"
                if entry.get("flip_rate") is not None:
                    cell += f" (flip {_pct(entry['flip_rate'])})"
                row.append(cell)
            rows.append(row)
    return _md_table(["arm", "seed"] + [f"{s} acc %" for s in splits], rows) if rows else None


_TERM_LABELS = {"lm_loss": "LM", "attn_loss": "Re-Attention", "path_loss": "path"}


def loss_table(results: Mapping[str, Any]) -> str | None:
    """Each run's loss terms, mean per epoch (``train.losses_by_epoch`` of results.json): one row
    per arm, seed and term. Whether a run learned the task shows in its LM loss per epoch."""
    rows, n_epochs = [], 0
    for name, arm in _arms(results).items():
        for seed, epochs in ((arm.get("train") or {}).get("losses_by_epoch") or {}).items():
            n_epochs = max(n_epochs, len(epochs))
            for term, label in _TERM_LABELS.items():
                if any(term in e for e in epochs):
                    rows.append([_arm_label(name), str(seed), label]
                                + [f"{e[term]:.3g}" if term in e else "—" for e in epochs])
    if not rows:
        return None
    rows = [r + [""] * (3 + n_epochs - len(r)) for r in rows]
    return _md_table(["arm", "seed", "loss", *(f"epoch {e}" for e in range(1, n_epochs + 1))], rows)


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
