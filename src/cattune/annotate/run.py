"""Annotating a whole dataset: concurrency, the cache, progress, the summary and the output files.

Items that share a prompt (identical text) are annotated once. Each finished outcome that cost a
model reply is written to the cache (fsync-ed) by the worker that produced it, before that worker
takes another item; a rerun with the same settings takes every cached item from the cache and
asks only for the rest. Guarantee after a crash, even SIGKILL: no item whose outcome reached the
cache is requested again; the items requested again are those in progress at the kill (at most
``concurrency`` of them) and transport failures (never cached). The output file is written once,
atomically, after every item has an outcome, in input order.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from cattune.annotate.cache import AnnotationCache
from cattune.annotate.outcome import ANNOTATED, ItemOutcome, Usage
from cattune.data.records import DataError, Record, load_records, write_records
from cattune.files import atomic_write_json

logger = logging.getLogger(__name__)


class Annotator(Protocol):
    """A backend that annotates one record at a time (rules, or an LLM behind a chat backend)."""

    max_concurrency: int | None

    def identity(self) -> dict[str, Any]: ...

    def cache_key(self, record: Record) -> str | None: ...

    def annotate(self, record: Record) -> ItemOutcome: ...

    def close(self) -> None: ...


@dataclass
class AnnotationSummary:
    """Counts for one run. Tokens and requests are this run's; ``cached_usage`` is what the
    reused cached outcomes cost when they were made."""

    items: int = 0
    annotated: int = 0
    failed: int = 0
    failed_by_kind: Counter[str] = field(default_factory=Counter)
    from_cache: int = 0
    unique_prompts: int = 0
    spans_kept: int = 0
    spans_dropped: int = 0
    dropped_by_reason: Counter[str] = field(default_factory=Counter)
    usage: Usage = field(default_factory=Usage)
    cached_usage: Usage = field(default_factory=Usage)
    replaced_annotations: int = 0

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["failed_by_kind"] = dict(self.failed_by_kind)
        out["dropped_by_reason"] = dict(self.dropped_by_reason)
        out["usage"] = self.usage.to_json()
        out["cached_usage"] = self.cached_usage.to_json()
        return out


@dataclass
class AnnotationRun:
    """Records, their outcomes (same order) and the summary."""

    records: list[Record]
    outcomes: list[ItemOutcome]
    summary: AnnotationSummary

    def output_records(self, *, keep_failed: bool = False) -> list[Record]:
        """Annotated records with every other field preserved; failed ones are left out, or kept
        without an ``important`` field with ``keep_failed``."""
        out = []
        for record, outcome in zip(self.records, self.outcomes):
            if outcome.status == ANNOTATED:
                out.append(dataclasses.replace(record, important=outcome.relations))
            elif keep_failed:
                out.append(dataclasses.replace(record, important=None))
        return out

    def report(self, settings: dict[str, Any] | None = None) -> dict[str, Any]:
        """Summary, every failure with its reason, and every dropped span, located by input line."""
        failures, dropped = [], []
        for index, (record, outcome) in enumerate(zip(self.records, self.outcomes)):
            where = {"index": index, "line": record.line}
            if outcome.status != ANNOTATED:
                failures.append({**where, "kind": outcome.failure_kind, "reason": outcome.reason,
                                 "reply": outcome.reply[:2000]})
            dropped.extend({**where, **d.to_json()} for d in outcome.dropped)
        return {"settings": settings or {}, "summary": self.summary.to_json(), "failures": failures, "dropped": dropped}


def summarise(records: Sequence[Record], outcomes: Sequence[ItemOutcome], keys: Sequence[str | None]) -> AnnotationSummary:
    summary = AnnotationSummary(items=len(records))
    seen: set[str] = set()
    for record, outcome, key in zip(records, outcomes, keys):
        if outcome.status == ANNOTATED:
            summary.annotated += 1
        else:
            summary.failed += 1
            summary.failed_by_kind[outcome.failure_kind] += 1
        summary.spans_kept += outcome.spans_kept
        summary.spans_dropped += len(outcome.dropped)
        summary.dropped_by_reason.update(d.reason for d in outcome.dropped)
        summary.replaced_annotations += record.important is not None
        # Shared prompts cost once; count each unique prompt's usage once.
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        summary.unique_prompts += 1
        if outcome.from_cache:
            summary.from_cache += 1
            summary.cached_usage.add(outcome.usage)
        else:
            summary.usage.add(outcome.usage)
    return summary


def annotate_records(
    records: Sequence[Record],
    annotator: Annotator,
    *,
    cache: AnnotationCache | None = None,
    concurrency: int = 8,
    retry_failed: bool = False,
    progress: bool = True,
) -> AnnotationRun:
    """Annotate every record, reusing and filling ``cache``; items are processed by up to
    ``concurrency`` threads (capped by the annotator's own limit).

    Cached failures are reused unless ``retry_failed``. An :class:`~cattune.annotate.llm.AnnotateError`
    from any item (bad credentials, unknown model) cancels the run and is raised; outcomes already
    cached stay cached.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if annotator.max_concurrency is not None:
        concurrency = min(concurrency, annotator.max_concurrency)
    keys = [annotator.cache_key(r) for r in records]
    outcomes: list[ItemOutcome | None] = [None] * len(records)
    # One job per unique prompt; rule-based items (no key) are one job each.
    jobs: dict[Any, list[int]] = {}
    for index, key in enumerate(keys):
        jobs.setdefault(key if key is not None else ("item", index), []).append(index)
    pending: list[tuple[Any, list[int]]] = []
    for job, indices in jobs.items():
        cached = cache.get(job) if cache is not None and isinstance(job, str) else None
        if cached is not None and (cached.status == ANNOTATED or not retry_failed):
            for i in indices:
                outcomes[i] = dataclasses.replace(cached, from_cache=True)
        else:
            pending.append((job, indices))
    done_items = sum(o is not None for o in outcomes)
    if done_items:
        logger.info("%d of %d items taken from the cache %s", done_items, len(records), cache.path if cache else "")

    failed = sum(o is not None and o.status != ANNOTATED for o in outcomes)

    def annotate_and_record(record: Record, job: Any) -> ItemOutcome:
        outcome = annotator.annotate(record)
        # Cached by the worker before it takes its next item: at any moment at most `concurrency`
        # items have been asked for without their outcome being on disk.
        if cache is not None and isinstance(job, str) and outcome.cacheable:
            cache.put(job, outcome)
        return outcome

    bar = tqdm(total=len(records), initial=done_items, desc="annotate", unit="item", disable=not progress, dynamic_ncols=True)
    executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="annotate")
    futures: dict[Future[ItemOutcome], list[int]] = {}
    try:
        for job, indices in pending:
            futures[executor.submit(annotate_and_record, records[indices[0]], job)] = indices
        for future in as_completed(futures):
            # AnnotateError (credentials, unknown model) or a bug stops the whole run; finished
            # items are already in the cache.
            outcome = future.result()
            indices = futures[future]
            for i in indices:
                outcomes[i] = outcome
            failed += len(indices) * (outcome.status != ANNOTATED)
            bar.update(len(indices))
            bar.set_postfix(failed=failed, refresh=False)
    except BaseException:
        annotator.close()
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        bar.close()
    executor.shutdown(wait=True)
    final = [o for o in outcomes if o is not None]
    assert len(final) == len(records), "every item must have an outcome"
    summary = summarise(records, final, keys)
    logger.info("annotated %d of %d items, %d failed; spans kept %d, dropped %d; %d requests, %d+%d tokens",
                summary.annotated, summary.items, summary.failed, summary.spans_kept, summary.spans_dropped,
                summary.usage.requests, summary.usage.prompt_tokens, summary.usage.completion_tokens)
    return AnnotationRun(list(records), final, summary)


def default_cache_path(out_path: str | os.PathLike[str]) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + ".annotate-cache.jsonl")


def default_report_path(out_path: str | os.PathLike[str]) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + ".annotate-report.json")


def annotate_file(
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    annotator: Annotator,
    *,
    cache_path: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    report_path: str | os.PathLike[str] | None = None,
    keep_failed: bool = False,
    concurrency: int = 8,
    retry_failed: bool = False,
    progress: bool = True,
) -> AnnotationRun:
    """Annotate a release-format JSONL file; write the output and a JSON report atomically.

    The cache defaults to ``<out stem>.annotate-cache.jsonl`` beside the output, so rerunning the
    same command after an interruption resumes; the report (summary, failures with reasons,
    dropped spans) defaults to ``<out stem>.annotate-report.json``.
    """
    if Path(in_path).resolve() == Path(out_path).resolve():
        raise DataError(out_path, None, "the output file is the input file", "write the annotations to a new file")
    records = load_records(in_path)
    cache = AnnotationCache(cache_path or default_cache_path(out_path)) if use_cache else None
    run = annotate_records(records, annotator, cache=cache, concurrency=concurrency,
                           retry_failed=retry_failed, progress=progress)
    if run.summary.replaced_annotations:
        logger.warning("%d input records already had an 'important' field; it was replaced", run.summary.replaced_annotations)
    write_records(out_path, run.output_records(keep_failed=keep_failed))
    settings = {"input": str(in_path), "output": str(out_path), "annotator": annotator.identity(),
                "cache": str(cache.path) if cache else None, "keep_failed": keep_failed}
    atomic_write_json(report_path or default_report_path(out_path), run.report(settings))
    return run
