"""The report's tables beyond the comparison table: numeric error, flips by change in token count,
attention shares, accuracy per seed and training losses by epoch."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from cattune.report.format import _arm_label, _bootstrap_p, _error_interval, _md_table, _pct, _share
from cattune.report.results import (
    ATTENTION_CATEGORIES,
    _arms,
    _attention,
    _causal_ratio,
    _compared_arms,
    _paired,
    _path_block,
    _reference,
    _seeds,
    _split_stats,
    _splits,
)


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
