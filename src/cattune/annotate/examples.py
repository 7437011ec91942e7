"""Human-written annotation examples: the few items a person annotates to show the assistant LLM
what a task's causal relations look like.

An example file (YAML or JSON) holds a one-line task description, optional extra guidance, and a
list of examples in the release format::

    task: predicting cancer risk from a person's statistics
    guidance: |                      # optional, appended to the prompt's rules
      The causal variables are Smoking, Weight and Exercise.
    examples:
      - input: "Here is the statistical data ... Answer: "
        target: "High Risk"
        important:
          - {"High Risk": ["Smoking: 7", "Weight: 5", "Exercise: 3"]}

Every example is validated like a model reply (each span must occur in ``input + target``, each
cause before its effect): an example that breaks the rules would teach the model to break them.
Example sets written for this project ship in ``cattune/examples/`` and can be named instead of a
path (``stg``, ``word_problems``, ``gsm8k``, ``arc``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from cattune.annotate.validate import validate_relations
from cattune.data.records import DataError, Record, parse_record


@dataclass(frozen=True)
class ExampleSet:
    """A task description, optional guidance and annotated examples, from one file."""

    task: str
    examples: tuple[Record, ...]
    guidance: str = ""
    source: str = ""


def shipped_example_sets() -> dict[str, Path]:
    """The example sets shipped with cattune, by name (file stem)."""
    folder = resources.files("cattune") / "examples"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith((".yaml", ".yml", ".json"))}


def _read(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(path, exc.lineno, f"invalid JSON: {exc.msg}") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise DataError(path, mark.line + 1 if mark else None, f"invalid YAML: {getattr(exc, 'problem', exc)}") from None


def load_example_set(name_or_path: str | os.PathLike[str]) -> ExampleSet:
    """Load and check an example file, given its path or the name of a shipped set."""
    shipped = shipped_example_sets()
    path = Path(name_or_path)
    if not path.exists() and str(name_or_path) in shipped:
        path = shipped[str(name_or_path)]
    if not path.exists():
        raise DataError(path, None, "example file not found",
                        f"pass a YAML/JSON file or one of the shipped sets: {', '.join(sorted(shipped))}")
    data = _read(path)
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list) or not data["examples"]:
        raise DataError(path, None, "expected a mapping with a non-empty 'examples' list",
                        "see docs/ANNOTATE.md for the example file format")
    task = data.get("task")
    if not isinstance(task, str) or not task.strip():
        raise DataError(path, None, "missing 'task': a one-line description of the task",
                        "e.g. task: solving arithmetic word problems")
    guidance = data.get("guidance") or ""
    if not isinstance(guidance, str):
        raise DataError(path, None, "'guidance' must be text")
    examples = []
    for number, raw in enumerate(data["examples"], start=1):
        where = f"example {number}"
        try:
            record = parse_record(raw, source=f"{path} ({where})")
        except DataError as exc:
            raise DataError(path, None, f"{where}: {exc.problem}", exc.hint) from None
        if not record.important:
            raise DataError(path, None, f"{where}: no 'important' relations", "each example must show its relations")
        if record.annotation_repairs:
            raise DataError(path, None, f"{where}: malformed 'important' ({', '.join(record.annotation_repairs)})",
                            'write each relation as {"effect": ["cause", ...]}')
        checked = validate_relations(record.text, [(r.effect, r.causes) for r in record.important])
        if checked.dropped:
            bad = checked.dropped[0]
            raise DataError(path, None, f"{where}: {bad.role} span {bad.span!r} (effect {bad.effect!r}) is {bad.reason.replace('_', ' ')}",
                            "spans must be copied exactly from input + target, each cause before its effect")
        examples.append(record)
    return ExampleSet(task.strip(), tuple(examples), guidance.strip(), str(path))
