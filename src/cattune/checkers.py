"""Answer checkers: how long to generate, when to stop, and whether a continuation is right, per task.

A checker turns the raw continuation of a prompt into its answer part (:meth:`Checker.extract`)
and judges it against the target (:meth:`Checker.is_correct`). Rules per task, chosen from the
released files' target formats:

* ``stg``, ``stg_h``: exact match after strip on the first line (the paper's rule; STG_H targets are
  printed integers, so "62.0" does not match "62").
* ``numeric`` (also ``mawps``, ``svamp``): the first number of the first line, an optional
  ``Answer:`` prefix skipped (MAWPS training targets are "Answer: 84.0", its OOD targets "84.0"),
  thousands separators removed, compared as numbers (see :func:`numbers_match`).
* ``asdiv``: like ``numeric`` with the unit in parentheses stripped ("6 (bags)"); targets that are
  not numbers (ratios "2:13", fractions "5/2", names, yes/no, times) are compared as normalised text
  (fractions as numbers).
* ``gsm8k``: the number after ``####``; a continuation without ``####`` counts only when it starts
  with the number (the bare-answer format of the released test targets).
* ``arc_e``: the option label (a letter A-E, or a digit for the items whose options are numbered)
  at the start of the answer, after an optional ``Answer:`` and parenthesis.

Numbers match when ``|p - t| <= 1e-6 * max(1, |t|)`` ("84.0" equals "84"), or, when the prediction
gives at least two decimals but fewer than the target, when the target rounded to the prediction's
decimals equals it (MAWPS targets such as "10.6666666667" accept "10.67", not "11" or "10.7").

Tasks whose targets are all numbers (``stg_h``, ``numeric``, ``mawps``, ``svamp``, ``gsm8k``) also
give an absolute error per answer (:meth:`Checker.absolute_error`): on STG_H, where exact matches
are rare for a small model, how far an answer is off says more than whether it is exact. ASDiv is
left out: its targets mix numbers, fractions and text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable

from cattune.data.records import DataError, Record

STG_LABELS = frozenset({"High Risk", "Low Risk", "Middle Risk"})
RELATIVE_TOLERANCE = 1e-6
MIN_ROUNDED_DECIMALS = 2

# A number as people print it: optional sign, thousands separators, decimals. The sign counts only
# when it does not follow a word or digit ("5-3" is 5, then 3).
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)|(?<![\w.])-?\.\d+")
_ANSWER_PREFIX = re.compile(r"^\s*(?:the\s+)?answer\b\s*(?:is\b)?\s*[:=]?\s*", re.IGNORECASE)
_UNIT_SUFFIX = re.compile(r"\s*\([^()]*\)\s*$")
_FRACTION = re.compile(r"^\s*(-?\d+)\s*/\s*(\d+)\s*$")
_GSM8K_MARK = re.compile(r"####\s*\$?\s*(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)(?!\d)")
_OPTION = re.compile(r"^\(?([A-E]|[1-9])(?![A-Za-z0-9])")
_OPTION_PHRASE = re.compile(r"\b(?:answer|option)\s+(?:is\s+)?\(?([A-E]|[1-9])(?![A-Za-z0-9])", re.IGNORECASE)


def first_line(generation: str) -> str:
    """The continuation up to its first newline, stripped."""
    return generation.split("\n", 1)[0].strip()


def _first_number_text(text: str) -> str:
    m = _NUMBER.search(text)
    return m.group(0).replace(",", "") if m else ""


def _decimals(number_text: str) -> int:
    return len(number_text.split(".", 1)[1]) if "." in number_text else 0


def numbers_match(predicted: str, target: str) -> bool:
    """Whether two printed numbers are equal under the module's stated tolerance."""
    p_text, t_text = _first_number_text(predicted), _first_number_text(target)
    if not p_text or not t_text:
        return False
    p, t = float(p_text), float(t_text)
    if math.isclose(p, t, rel_tol=0.0, abs_tol=RELATIVE_TOLERANCE * max(1.0, abs(t))):
        return True
    d = _decimals(p_text)
    if MIN_ROUNDED_DECIMALS <= d < _decimals(t_text):
        return math.isclose(round(t, d), p, rel_tol=0.0, abs_tol=10 ** -(d + 3))
    return False


def _exact_match(answer: str, target: str) -> bool:
    return answer == target.strip()


def _normalise_text(text: str) -> str:
    text = _UNIT_SUFFIX.sub("", text.strip())
    text = re.sub(r"\s*([:/])\s*", r"\1", text)
    return re.sub(r"\s+", " ", text).strip().rstrip(".").strip().lower()


@dataclass(frozen=True)
class Checker:
    """How to generate and judge answers for one task.

    ``stop_strings`` end a continuation once they appear; ``stop_pattern`` (a regex) does the same
    for tasks whose answer ends at a structure rather than a fixed string (GSM8K's "#### N" line).
    """

    name: str
    max_new_tokens: int
    stop_strings: tuple[str, ...]
    stop_pattern: str | None = None
    extract_fn: Callable[[str], str] = field(default=first_line, repr=False, compare=False)
    match_fn: Callable[[str, str], bool] = field(default=_exact_match, repr=False, compare=False)
    # The number a target stands for, for tasks whose targets are numbers (None: not numeric).
    target_number_fn: Callable[[str], str] | None = field(default=None, repr=False, compare=False)

    @property
    def numeric(self) -> bool:
        """Whether answers can be off by an amount (numeric targets), not just right or wrong."""
        return self.target_number_fn is not None

    def extract(self, generation: str) -> str:
        """The answer part of a raw continuation ("" when there is none)."""
        return self.extract_fn(generation)

    def is_correct(self, generation: str, target: str) -> bool:
        return self.answer_matches(self.extract(generation), target)

    def answer_matches(self, answer: str, target: str) -> bool:
        """Whether an already extracted answer matches the target."""
        return bool(answer) and self.match_fn(answer, target)

    def target_number(self, target: str) -> str:
        """The number a target stands for, as printed ("" when the task is not numeric or it holds none)."""
        return _first_number_text(self.target_number_fn(target)) if self.target_number_fn else ""

    def absolute_error(self, answer: str, target: str) -> float | None:
        """``|answer - target|`` as numbers; None when the task is not numeric or either holds no number."""
        a, t = _first_number_text(answer), self.target_number(target)
        return abs(float(a) - float(t)) if a and t else None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "max_new_tokens": self.max_new_tokens,
                "stop_strings": list(self.stop_strings), "stop_pattern": self.stop_pattern}


def _extract_numeric(generation: str) -> str:
    return _first_number_text(_ANSWER_PREFIX.sub("", first_line(generation)))


def _numeric_target(target: str) -> str:
    return _ANSWER_PREFIX.sub("", target.strip())


def _compare_numeric(answer: str, target: str) -> bool:
    return numbers_match(answer, _numeric_target(target))


def _asdiv_target_kind(target: str) -> str:
    core = _UNIT_SUFFIX.sub("", _numeric_target(target))
    if _FRACTION.match(core):
        return "fraction"
    m = _NUMBER.fullmatch(core.strip().lstrip("$"))
    return "number" if m else "text"


def _extract_asdiv(generation: str) -> str:
    line = _ANSWER_PREFIX.sub("", first_line(generation))
    frac = re.match(r"^\s*(-?\d+\s*/\s*\d+)(?![\d.])", line)
    if frac:
        return re.sub(r"\s+", "", frac.group(1))
    return _UNIT_SUFFIX.sub("", line).strip()


def _compare_asdiv(answer: str, target: str) -> bool:
    kind = _asdiv_target_kind(target)
    core = _UNIT_SUFFIX.sub("", _numeric_target(target))
    if kind == "number":
        return numbers_match(answer, core)
    if kind == "fraction":
        m = _FRACTION.match(core)
        assert m is not None
        value = Fraction(int(m.group(1)), int(m.group(2)))
        pm = _FRACTION.match(answer)
        if pm:
            return Fraction(int(pm.group(1)), int(pm.group(2))) == value
        return numbers_match(answer, repr(float(value)))
    return _normalise_text(answer) == _normalise_text(core)


def _extract_gsm8k(generation: str) -> str:
    m = _GSM8K_MARK.search(generation)
    if m:
        return m.group(1).replace(",", "")
    # A bare answer ("18", "$18.00"): the number must open the continuation; a worked solution cut
    # off before its "####" line is not given credit for the first number it mentions.
    head = _ANSWER_PREFIX.sub("", generation.lstrip()).lstrip("$ ")
    m = _NUMBER.match(head)
    return m.group(0).replace(",", "") if m else ""


def _compare_gsm8k(answer: str, target: str) -> bool:
    t = _extract_gsm8k(target)
    return bool(t) and numbers_match(answer, t)


def _extract_option(generation: str) -> str:
    line = _ANSWER_PREFIX.sub("", first_line(generation))
    m = _OPTION.match(line)
    if m:
        return m.group(1)
    m = _OPTION_PHRASE.search(first_line(generation))
    return m.group(1) if m else ""


def _compare_option(answer: str, target: str) -> bool:
    return answer == target.strip().rstrip(".").lstrip("(").rstrip(")")


def _numeric_checker(name: str) -> Checker:
    return Checker(name, 16, ("\n",), None, _extract_numeric, _compare_numeric, _numeric_target)


_CHECKERS: dict[str, Checker] = {
    "stg": Checker("stg", 8, ("\n",)),
    "stg_h": Checker("stg_h", 8, ("\n",), target_number_fn=str.strip),
    "numeric": _numeric_checker("numeric"),
    "mawps": _numeric_checker("mawps"),
    "svamp": _numeric_checker("svamp"),
    "asdiv": Checker("asdiv", 24, ("\n",), None, _extract_asdiv, _compare_asdiv),
    # Worked solutions span lines; stop at the end of the "#### N" line (or at eos).
    "gsm8k": Checker("gsm8k", 256, (), r"####[^\n]*\d[^\n]*\n", _extract_gsm8k, _compare_gsm8k, _extract_gsm8k),
    "arc_e": Checker("arc_e", 4, ("\n",), None, _extract_option, _compare_option),
}
TASKS = tuple(_CHECKERS)


def get_checker(task: str) -> Checker:
    """The checker of a task name (see :data:`TASKS`)."""
    try:
        return _CHECKERS[task.lower()]
    except KeyError:
        raise ValueError(f"unknown task '{task}'; known tasks: {', '.join(TASKS)}") from None


def _is_number(text: str) -> bool:
    return _NUMBER.fullmatch(text.strip().lstrip("$")) is not None


def infer_task(records: Sequence[Record]) -> str:
    """The task of a file, from its targets, prompts and extra fields (the released formats).

    Raises :class:`DataError` when the file matches no known format; pass the task explicitly then.
    """
    if not records:
        raise ValueError("cannot infer the task of an empty list of records")
    source = records[0].source or "<records>"
    targets = [r.target.strip() for r in records]
    prompts = [r.input for r in records]
    if all(t in STG_LABELS for t in targets):
        return "stg"
    if all("Air Quality Index" in p for p in prompts):
        return "stg_h"
    if all(re.fullmatch(r"[A-E]|[1-9]", t) for t in targets) and all(
        re.search(r"\n\(?[A1]\s*[.)]", p) for p in prompts
    ):
        return "arc_e"
    if any("####" in t for t in targets) or any("####" in str(r.extra.get("answer", "")) for r in records):
        return "gsm8k"
    if any("solution_type" in r.extra for r in records) or any(
        _UNIT_SUFFIX.search(t) and _is_number(_UNIT_SUFFIX.sub("", t)) for t in targets
    ):
        return "asdiv"
    if all(_is_number(_numeric_target(t)) for t in targets):
        return "numeric"
    examples = ", ".join(repr(t) for t in targets[:3])
    raise DataError(source, None, f"cannot tell which task this file is (targets such as {examples})",
                    f"pass the task explicitly (one of {', '.join(TASKS)})")
