"""Evaluation: batched greedy generation and accuracy of a model on release-format files.

:func:`generate` continues prompts greedily with the KV cache, many prompts per forward pass (left
padded, each row with its own position ids so padding changes nothing but rounding), and stops a
row at eos, at a stop string or at a stop pattern. Prompts are tokenised exactly as training
tokenises them (:func:`cattune.encoding.encode_prompt`).

:func:`evaluate_records` judges the continuations with the task's checker
(:mod:`cattune.checkers`) and reports accuracy with a Wilson 95% interval beside the majority-class
baseline of the same file; per-item predictions go to a JSONL file so every figure can be traced.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import re
import statistics
import subprocess
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from cattune import __version__
from cattune.checkers import Checker, get_checker, infer_task
from cattune.data.records import DataError, Record, load_records
from cattune.encoding import encode_prompt
from cattune.files import atomic_write_text
from cattune.stats import wilson_interval

if TYPE_CHECKING:
    from cattune.flip import FlipResult

logger = logging.getLogger(__name__)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end a continuation: the tokenizer's eos (what training appends) and the
    model's configured eos (a base model may end with its own)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    for config in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(config, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def _model_device(model: Any) -> Any:
    return next(model.parameters()).device


class _StopCondition:
    def __init__(self, stop_strings: Sequence[str], stop_pattern: str | None):
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.pattern = re.compile(stop_pattern) if stop_pattern else None

    def __bool__(self) -> bool:
        return bool(self.stop_strings or self.pattern)

    def reached(self, text: str) -> bool:
        return any(s in text for s in self.stop_strings) or bool(self.pattern and self.pattern.search(text))


# Prompts of a file often open with the same instructions (16 of the 66 tokens of an STG prompt);
# that prefix is run once and its KV cache reused when it is at least this long.
MIN_SHARED_PREFIX = 8


def _shared_prefix_length(encoded: Sequence[Sequence[int]]) -> int:
    """Length of the longest common token prefix, leaving every prompt at least one token of its own."""
    first = encoded[0]
    n = min(len(ids) for ids in encoded) - 1
    for ids in encoded[1:]:
        k = 0
        while k < n and ids[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def _generate_batch(
    model: Any, tokenizer: Any, batch: list[list[int]], *, max_new_tokens: int, pad_id: int,
    eos_ids: set[int], stop: _StopCondition, prefix_cache: Any = None, prefix_len: int = 0,
) -> list[str]:
    import torch

    device = _model_device(model)
    rows = len(batch)
    suffixes = [ids[prefix_len:] for ids in batch]
    width = max(len(ids) for ids in suffixes)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    suffix_mask = torch.zeros((rows, width), dtype=torch.long)
    for row, ids in enumerate(suffixes):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        suffix_mask[row, width - len(ids):] = 1
    # Each row counts positions from its own first real token, as it would unpadded; with a shared
    # prefix the padding sits between the prefix and the row's own tokens.
    position_ids = prefix_len + (suffix_mask.cumsum(-1) - 1).clamp(min=0)
    attention_mask = torch.cat([torch.ones((rows, prefix_len), dtype=torch.long), suffix_mask], dim=1)
    cache = None
    if prefix_cache is not None:
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(rows)
    input_ids, attention_mask, position_ids = input_ids.to(device), attention_mask.to(device), position_ids.to(device)

    generated: list[list[int]] = [[] for _ in batch]
    done = [False] * rows
    active = list(range(rows))  # batch row -> original row; finished rows are dropped
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                past_key_values=cache, use_cache=True, logits_to_keep=1)
    for step in range(max_new_tokens):
        next_tokens = out.logits[:, -1, :].argmax(dim=-1).tolist()
        for row, token in zip(active, next_tokens):
            if token in eos_ids:
                done[row] = True
                continue
            generated[row].append(token)
            if stop and stop.reached(tokenizer.decode(generated[row], skip_special_tokens=True)):
                done[row] = True
        if all(done) or step == max_new_tokens - 1:
            break
        cache = out.past_key_values
        keep = [j for j, row in enumerate(active) if not done[row]]
        if len(keep) < len(active):
            # Drop finished rows so later steps (up to 256 for GSM8K) compute only live ones.
            index = torch.tensor(keep, dtype=torch.long, device=device)
            cache.batch_select_indices(index)
            attention_mask, position_ids = attention_mask[index], position_ids[index]
            next_tokens = [next_tokens[j] for j in keep]
            active = [active[j] for j in keep]
        feed = torch.tensor(next_tokens, dtype=torch.long, device=device)[:, None]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=1)
        position_ids = position_ids[:, -1:] + 1
        out = model(input_ids=feed, attention_mask=attention_mask, position_ids=position_ids,
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in generated]


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    stop_strings: Sequence[str] = (),
    stop_pattern: str | None = None,
    share_prefix: bool = True,
    progress: bool = True,
) -> list[str]:
    """Greedy continuations of ``prompts``, in order, special tokens removed.

    A row ends at an eos token (not included), once its text contains a stop string or matches
    ``stop_pattern`` (the token completing it is kept; checkers cut there), or after
    ``max_new_tokens``. Prompts are sorted by length before batching so little padding is computed;
    with ``share_prefix`` a token prefix common to all prompts (of at least
    :data:`MIN_SHARED_PREFIX` tokens) is computed once and its cache reused by every batch.
    """
    import torch

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not prompts:
        return []
    encoded = [encode_prompt(tokenizer, p)[0] for p in prompts]
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise ValueError(f"prompt {empty[0]} encodes to no tokens; a continuation needs at least one")
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0)
    stop = _StopCondition(stop_strings, stop_pattern)
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    prefix_len = _shared_prefix_length(encoded) if share_prefix else 0
    if prefix_len < MIN_SHARED_PREFIX:
        prefix_len = 0
    results: list[str] = [""] * len(prompts)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.inference_mode():
            prefix_cache = None
            if prefix_len:
                device = _model_device(model)
                prefix = torch.tensor([encoded[0][:prefix_len]], dtype=torch.long, device=device)
                prefix_cache = model(input_ids=prefix, attention_mask=torch.ones_like(prefix),
                                     position_ids=torch.arange(prefix_len, device=device)[None], use_cache=True,
                                     logits_to_keep=1).past_key_values
            bar = tqdm(total=len(prompts), desc="generating", unit="item", disable=not progress, leave=False)
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                texts = _generate_batch(model, tokenizer, [encoded[i] for i in idx], max_new_tokens=max_new_tokens,
                                        pad_id=pad_id, eos_ids=eos_ids, stop=stop, prefix_cache=prefix_cache,
                                        prefix_len=prefix_len)
                for i, text in zip(idx, texts):
                    results[i] = text
                bar.update(len(idx))
            bar.close()
    finally:
        if was_training:
            model.train()
    return results


@dataclass
class FileResult:
    """Accuracy of one model on one file, with everything needed to trace and compare it."""

    path: str
    task: str
    n: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    majority_label: str
    majority_accuracy: float
    predictions_path: str | None
    per_item: list[bool]
    no_answer: int = 0
    checker: dict[str, Any] = field(default_factory=dict)
    generations: list[str] = field(default_factory=list, repr=False)
    answers: list[str] = field(default_factory=list, repr=False)
    flip: FlipResult | None = None
    numeric_error: dict[str, Any] | None = None  # see absolute_error_summary; numeric tasks only

    def to_json(self) -> dict[str, Any]:
        """The summary and per-item correctness (paired tests need it); generations and answers
        stay in the predictions file."""
        out: dict[str, Any] = {
            "path": self.path,
            "task": self.task,
            "n": self.n,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "confidence": 0.95,
            "interval": "wilson",
            "majority_label": self.majority_label,
            "majority_accuracy": self.majority_accuracy,
            "no_answer": self.no_answer,
            "predictions": self.predictions_path,
            "checker": self.checker,
            "per_item": list(self.per_item),
        }
        if self.numeric_error is not None:
            out.update(self.numeric_error)
        if self.flip is not None:
            out["flip"] = self.flip.to_json()
        return out


def absolute_error_summary(checker: Checker, answers: Sequence[str], targets: Sequence[str]) -> dict[str, Any] | None:
    """A numeric task's per-item absolute errors (None where the answer holds no number), their mean
    over the answers that hold one, and how many do; None when the task is not numeric.

    ``median_answer_error`` is the mean absolute error of answering every item with the median
    target: the numeric counterpart of the majority class (a model near it has learned nothing usable).
    """
    if not checker.numeric:
        return None
    errors = [checker.absolute_error(a, t) for a, t in zip(answers, targets, strict=True)]
    known = [e for e in errors if e is not None]
    values = [float(n) for t in targets if (n := checker.target_number(t))]
    median = statistics.median(values) if values else None
    return {"absolute_error": errors, "mean_absolute_error": sum(known) / len(known) if known else None,
            "numeric_answers": len(known),
            "median_answer_error": sum(abs(v - median) for v in values) / len(values) if values else None}


def majority_baseline(records: Sequence[Record]) -> tuple[str, float]:
    """The most frequent target of a file and its share (ties: the first seen)."""
    counts = Counter(r.target.strip() for r in records)
    label, count = counts.most_common(1)[0]
    return label, count / len(records)


def write_predictions(path: str | os.PathLike[str], records: Sequence[Record], generations: Sequence[str],
                      answers: Sequence[str], correct: Sequence[bool]) -> Path:
    """One JSON line per item: index, source line, prompt, target, raw generation, answer, correct."""
    lines = []
    for index, (rec, gen, ans, ok) in enumerate(zip(records, generations, answers, correct)):
        lines.append(json.dumps({"index": index, "line": rec.line, "prompt": rec.input, "target": rec.target,
                                 "generation": gen, "answer": ans, "correct": bool(ok)}, ensure_ascii=False) + "\n")
    return atomic_write_text(path, "".join(lines))


def evaluate_records(
    model: Any,
    tokenizer: Any,
    records: Sequence[Record],
    *,
    task: str | None = None,
    batch_size: int = 16,
    predictions_path: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> FileResult:
    """Generate an answer for every record and judge it with the task's checker."""
    if not records:
        raise ValueError("no records to evaluate")
    task = task or infer_task(records)
    checker: Checker = get_checker(task)
    generations = generate(model, tokenizer, [r.input for r in records], max_new_tokens=checker.max_new_tokens,
                           batch_size=batch_size, stop_strings=checker.stop_strings,
                           stop_pattern=checker.stop_pattern, progress=progress)
    answers = [checker.extract(g) for g in generations]
    per_item = [checker.answer_matches(a, r.target) for a, r in zip(answers, records)]
    n, correct = len(records), sum(per_item)
    low, high = wilson_interval(correct, n)
    majority_label, majority_accuracy = majority_baseline(records)
    written = None
    if predictions_path is not None:
        written = str(write_predictions(predictions_path, records, generations, answers, per_item))
    source = records[0].source or "<records>"
    result = FileResult(
        path=source, task=checker.name, n=n, correct=correct, accuracy=correct / n, ci_low=low, ci_high=high,
        majority_label=majority_label, majority_accuracy=majority_accuracy, predictions_path=written,
        per_item=per_item, no_answer=sum(1 for a in answers if not a), checker=checker.to_json(),
        generations=generations, answers=answers,
        numeric_error=absolute_error_summary(checker, answers, [r.target for r in records]),
    )
    logger.info("%s: accuracy %.1f%% [%.1f, %.1f] (n=%d), majority '%s' %.1f%%", source, 100 * result.accuracy,
                100 * low, 100 * high, n, majority_label, 100 * majority_accuracy)
    return result


def output_names(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Distinct file-name stems for per-file outputs (``a/test.jsonl`` and ``b/test.jsonl`` differ)."""
    stems = [Path(p).stem for p in paths]
    counts = Counter(stems)
    names, seen = [], Counter()
    for stem in stems:
        if counts[stem] > 1:
            seen[stem] += 1
            stem = f"{stem}-{seen[stem]}"
        names.append(stem)
    return names


def evaluate_files(
    model_name_or_path: str,
    paths: Sequence[str | os.PathLike[str]],
    *,
    task: str | None = None,
    batch_size: int = 16,
    out_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    dtype: Any = None,
    flip_perturbations: Mapping[str, Callable[[str, random.Random], str]] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, FileResult]:
    """Evaluate one model on several files, loading it once.

    ``out_dir`` receives ``<stem>.predictions.jsonl`` per file. ``flip_perturbations`` maps a task
    to its perturbation (e.g. ``{"stg": cattune.data.stg.redraw_spurious}``): files of that task
    also get the spurious flip rate (:mod:`cattune.flip`, seeded with ``seed``, per item in
    ``<stem>.flips.jsonl``). ``limit`` keeps the first N items of each file. Every file is read,
    its task settled and its prompts perturbed before the model is loaded, so bad input fails fast.
    """
    # Imported here: cattune.flip builds on this module's generate().
    from cattune.flip import flip_rate, perturb_records
    from cattune.models import load_model, load_tokenizer

    flip_perturbations = dict(flip_perturbations or {})
    datasets: list[tuple[str, list[Record], str]] = []
    for path in paths:
        records = load_records(path)
        if limit is not None:
            records = records[:limit]
        file_task = get_checker(task or infer_task(records)).name
        if file_task in flip_perturbations:
            perturb_records(records, flip_perturbations[file_task], seed=seed)  # raises on prompts it cannot handle
        datasets.append((str(path), records, file_task))
    unused = set(flip_perturbations) - {t for _, _, t in datasets}
    if unused:
        raise DataError(datasets[0][0], None, f"no file is a {' or '.join(sorted(unused))} file, so no flip rate can be "
                        "measured", f"file tasks: {', '.join(t for _, _, t in datasets)}")
    model = load_model(model_name_or_path, dtype=dtype, merge_adapter=True)
    tokenizer = load_tokenizer(model_name_or_path)
    names = output_names([p for p, _, _ in datasets])
    results: dict[str, FileResult] = {}
    for (path, records, file_task), name in zip(datasets, names):
        predictions = Path(out_dir) / f"{name}.predictions.jsonl" if out_dir is not None else None
        result = evaluate_records(model, tokenizer, records, task=file_task, batch_size=batch_size,
                                  predictions_path=predictions, progress=progress)
        result.path = path
        if file_task in flip_perturbations:
            flips_path = Path(out_dir) / f"{name}.flips.jsonl" if out_dir is not None else None
            result.flip = flip_rate(model, tokenizer, records, flip_perturbations[file_task], task=file_task,
                                    seed=seed, batch_size=batch_size, original_generations=result.generations,
                                    per_item_path=flips_path, progress=progress)
        results[path] = result
    return results


def git_revision(start: str | os.PathLike[str] | None = None) -> str | None:
    """The commit of the git checkout holding the code (``+dirty`` with uncommitted changes), or None."""
    folder = Path(start) if start is not None else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}+dirty" if dirty else rev


def provenance() -> dict[str, Any]:
    """Package version and code revision to store beside every result."""
    import torch
    import transformers

    return {"cattune_version": __version__, "git_revision": git_revision(),
            "torch_version": torch.__version__, "transformers_version": transformers.__version__}
