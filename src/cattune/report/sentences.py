"""The findings: short sentences computed from the numbers, each arm against the baseline per
split (better, worse or not significantly different), the majority-class check, flip rates,
numeric error and attention."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cattune.report.comparison import ALPHA, Comparison, compare_arms
from cattune.report.format import (
    _arm_label,
    _bootstrap_p,
    _cell,
    _error_interval,
    _interval,
    _pct,
    _share,
    _the,
    seed_t_p,
)
from cattune.report.results import (
    BASELINE,
    CAT,
    _arms,
    _attention,
    _compared_arms,
    _has_flip,
    _is_ood,
    _majority,
    _paired,
    _reference,
    _seeds,
    _split_n,
    _split_stats,
    _splits,
)


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
                   f"{100 * seed_test['mean_difference']:+.1f} points, {seed_t_p(seed_test)}")
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
                    basis += f"; per seed ({seed_test['n']} pairs of runs): {seed_t_p(seed_test)}"
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
                basis += f"; per seed ({seed_test['n']} pairs of runs): {seed_t_p(seed_test)}"
            out.append(f"{_arm_label(arm)} vs {_reference(results)} mean absolute error on {split}: "
                       f"{other['mean_absolute_error']:.2f} vs {base['mean_absolute_error']:.2f} (difference "
                       f"{boot['mean_difference']:+.2f}{_error_interval(boot['ci_low'], boot['ci_high'])}; {basis}): "
                       f"{_arm_label(arm)} is {verdict}.")
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
