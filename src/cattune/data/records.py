"""Release-format records: loading, validating and writing CAT JSONL files.

One JSON object per line with ``input``, ``target`` and, on annotated files, ``important``: a
list of one-key objects ``{effect span: [cause spans]}`` (METHOD.md section 2). The released files
have quirks (integer targets, empty ``{}`` relations, several effects in one object, a cause list
given as a bare string); they are normalised here and every repair is counted on the record, so
nothing is dropped silently. Fields other than these three are kept untouched in ``extra`` so a
tool that rewrites a file preserves them.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cattune.files import atomic_write_text

logger = logging.getLogger(__name__)

CORE_FIELDS = ("input", "target", "important")


class DataError(ValueError):
    """Malformed input data: names the file, the line (1-based) and what to do about it."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, problem: str, hint: str = ""):
        self.path = str(path)
        self.line = line
        self.problem = problem
        self.hint = hint
        where = f"{self.path}:{line}" if line is not None else self.path
        message = f"{where}: {problem}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


@dataclass(frozen=True)
class Relation:
    """One word-level causal relation: ``effect`` depends on each span in ``causes``."""

    effect: str
    causes: tuple[str, ...]


@dataclass
class Record:
    """One training or test item.

    ``target`` is always a string (the released STG_H files store integers; the model is trained
    and judged on their printed form). ``important`` is ``None`` when the line has no annotation
    at all, and a possibly empty tuple when it has one. ``annotation_repairs`` counts what the
    loader had to normalise or could not use, by kind.
    """

    input: str
    target: str
    important: tuple[Relation, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    line: int = 0
    annotation_repairs: Counter[str] = field(default_factory=Counter)
    raw_target: Any = None

    @property
    def text(self) -> str:
        """The training text without the end-of-sequence token: ``input + target``."""
        return self.input + self.target

    @property
    def is_annotated(self) -> bool:
        return self.important is not None

    def to_json(self) -> dict[str, Any]:
        """The release-format object, other fields preserved, the target in its original type."""
        obj: dict[str, Any] = {
            "input": self.input,
            "target": self.raw_target if self.raw_target is not None else self.target,
        }
        if self.important is not None:
            obj["important"] = [{rel.effect: list(rel.causes)} for rel in self.important]
        for key, value in self.extra.items():
            obj[key] = value
        return obj


def _parse_important(value: Any, repairs: Counter[str]) -> tuple[Relation, ...]:
    if not isinstance(value, list):
        raise ValueError(f"'important' must be a list of {{effect: [causes]}} objects, got {type(value).__name__}")
    relations: list[Relation] = []
    for item in value:
        if not isinstance(item, dict):
            repairs["relation_not_an_object"] += 1
            continue
        if not item:
            repairs["empty_relation"] += 1
            continue
        if len(item) > 1:
            repairs["several_effects_in_one_object"] += 1
        for effect, causes in item.items():
            if isinstance(causes, str):
                repairs["cause_list_was_a_string"] += 1
                causes = [causes]
            if not isinstance(causes, list):
                repairs["causes_not_a_list"] += 1
                continue
            kept = tuple(c if isinstance(c, str) else str(c) for c in causes if c is not None and str(c) != "")
            if len(kept) != len(causes):
                repairs["empty_cause_span"] += len(causes) - len(kept)
            if not str(effect):
                repairs["empty_effect_span"] += 1
                continue
            if not kept:
                repairs["relation_without_causes"] += 1
                continue
            relations.append(Relation(str(effect), kept))
    return tuple(relations)


def parse_record(obj: Any, *, source: str = "", line: int = 0) -> Record:
    """Turn one decoded JSON value into a :class:`Record`; raise :class:`DataError` if unusable."""
    if not isinstance(obj, dict):
        raise DataError(source, line, f"expected a JSON object, got {type(obj).__name__}",
                        "each line must be one object with 'input' and 'target'")
    missing = [k for k in ("input", "target") if k not in obj]
    if missing:
        raise DataError(source, line, f"missing field(s) {', '.join(repr(m) for m in missing)}",
                        f"fields present: {', '.join(sorted(obj)) or 'none'}")
    if not isinstance(obj["input"], str):
        raise DataError(source, line, f"'input' must be a string, got {type(obj['input']).__name__}")
    raw_target = obj["target"]
    if isinstance(raw_target, bool) or not isinstance(raw_target, (str, int, float)):
        raise DataError(source, line, f"'target' must be a string or a number, got {type(raw_target).__name__}")
    repairs: Counter[str] = Counter()
    important = None
    if "important" in obj and obj["important"] is not None:
        try:
            important = _parse_important(obj["important"], repairs)
        except ValueError as exc:
            raise DataError(source, line, str(exc)) from None
    extra = {k: v for k, v in obj.items() if k not in CORE_FIELDS}
    return Record(
        input=obj["input"],
        target=str(raw_target),
        important=important,
        extra=extra,
        source=source,
        line=line,
        annotation_repairs=repairs,
        raw_target=raw_target,
    )


def iter_records(path: str | os.PathLike[str]) -> Iterator[Record]:
    """Yield the records of a release-format JSONL file, failing with a :class:`DataError`."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, "file not found")
    if path.is_dir():
        raise DataError(path, None, "is a directory", "pass a .jsonl file")
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(path, number, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(path, number, f"invalid JSON: {exc.msg} at column {exc.colno}",
                                "each line must hold exactly one JSON object") from None
            yield parse_record(obj, source=str(path), line=number)


def load_records(path: str | os.PathLike[str], *, require_annotation: bool = False) -> list[Record]:
    """Load a whole release-format JSONL file.

    With ``require_annotation`` every record must carry an ``important`` field (it may be empty);
    training on a file without annotations is then refused with the first offending line.
    """
    records = list(iter_records(path))
    if not records:
        raise DataError(path, None, "no records", "the file is empty")
    if require_annotation:
        for rec in records:
            if rec.important is None:
                raise DataError(path, rec.line, "record has no 'important' annotation",
                                "annotate the file first (cattune annotate) or train without the attention term")
    repairs = sum((r.annotation_repairs for r in records), Counter())
    if repairs:
        logger.info("%s: normalised annotations: %s", path, dict(repairs))
    return records


def write_records(path: str | os.PathLike[str], records: Iterable[Record | dict[str, Any]]) -> Path:
    """Write records as JSONL atomically (a temporary file renamed into place)."""
    lines = []
    for rec in records:
        obj = rec.to_json() if isinstance(rec, Record) else rec
        lines.append(json.dumps(obj, ensure_ascii=False) + "\n")
    return atomic_write_text(path, "".join(lines))
