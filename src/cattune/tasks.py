"""Downstream tasks over the released CAT files: splits, one prompt format, deduplicated tests.

A :class:`Task` names its answer checker (:mod:`cattune.checkers`), its training file and its
test splits, each a :class:`Source` (a released file, or its annotated / unannotated part, read in
one dataset's :class:`Format`). :func:`prepare_task` writes the splits as release-format JSONL
with normalised prompts and targets, drops test items whose question also occurs in the training
file (or earlier in the same split), and writes a card with every count.

Honest splits (``../shared/data/cat-release/README.md``): the released MAWPS and SVAMP "OOD" files
are whole-dataset concatenations that contain the training items, so out of distribution here means
cross-dataset transfer: ``mawps`` trains on MAWPS and tests OOD on all of SVAMP, ``svamp`` the
reverse. GSM8K trains on ``gsm8k_val.jsonl`` (annotated worked solutions carved from the official
training set) and tests on the official test set. ASDiv trains on its annotated 80% and tests on the
unannotated 20%. ARC-E keeps its released train / val / test. None of the last three has an OOD split.

Prompt format. Every word-problem prompt is ``<question> Answer: `` and every target the bare
answer, so that training and evaluation prompts agree and MAWPS and SVAMP read alike for transfer:

* MAWPS training, val and test inputs lack the answer cue and their targets read ``Answer: 84.0``
  (the model would be trained on ``...end with?Answer: 84.0``, no space); the cue moves into the
  prompt and the target becomes ``84.0``, the form of the released MAWPS OOD file.
* SVAMP inputs are ``Body + ". " + Question + ". Answer: "`` as released, which doubles the full
  stop of 642 of 1000 bodies (``house.. How many ...?. Answer: ``); the prompt is rebuilt from the
  Body and Question fields with single punctuation, and the few annotation spans that quote a
  doubled stop (``Now he has $ 12..``) are rewritten alike.
* ASDiv inputs whose question ends in a space read ``?  Answer: ``; the space is dropped.
* GSM8K prompts already have the format; training targets stay the worked solutions ending in
  ``#### N``, calculator notes ``<<a*b=c>>`` included (the annotation spans quote them).
* ARC-E prompts (question, one option per line, ``\\nAnswer: ``) and letter targets are kept.

Annotations are otherwise kept as written; the card counts, per split, the annotation spans found
(as whole-word matches, :func:`cattune.masks.find_occurrences`) in the released text and in the
normalised text, so a span lost or gained by normalisation is visible.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cattune import __version__
from cattune.checkers import get_checker
from cattune.data.records import DataError, Record, Relation, load_records, write_records
from cattune.files import atomic_write_json, atomic_write_text
from cattune.masks import find_occurrences

logger = logging.getLogger(__name__)

ANSWER_CUE = " Answer: "
CARD_JSON = "card.json"
CARD_MD = "card.md"
ORIGIN_FIELD = "origin"  # "<file relative to the release root>:<line>" of every prepared record
# What normalisation did to a split: prompts and targets rewritten; annotation spans (effects and
# causes, each occurrence in a relation counted once) rewritten, and found in the released and the
# normalised text.
NORMALISATION_COUNTS = ("prompts_changed", "targets_changed", "spans", "spans_rewritten", "spans_found_released",
                        "spans_found_normalised", "spans_lost", "spans_gained")

_CUE_AT_END = re.compile(r"\s*Answer:\s*$")
_CUE_AT_START = re.compile(r"^\s*Answer:\s*")
_WORD = re.compile(r"[a-z0-9]+")
_DOUBLED_STOP = re.compile(r"([.?!])\.(?=\s|$)")


# -- formats ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Format:
    """How one dataset's released records become the task's prompt and target."""

    name: str
    prompt: Callable[[Record], str] = field(repr=False)
    target: Callable[[Record], str] = field(repr=False)
    description: str = ""
    # Annotation spans that quote a released artefact the prompt no longer has are rewritten alike.
    span: Callable[[str], str] | None = field(default=None, repr=False)


def _question_then_cue(record: Record) -> str:
    return _CUE_AT_END.sub("", record.input).rstrip() + ANSWER_CUE


def _without_cue(record: Record) -> str:
    return _CUE_AT_START.sub("", record.target).strip()


def _stripped_target(record: Record) -> str:
    return record.target.strip()


def _full_stop(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "?", "!")) else text + "."


def _svamp_prompt(record: Record) -> str:
    body, question = record.extra.get("Body"), record.extra.get("Question")
    if not isinstance(body, str) or not isinstance(question, str) or record.input != f"{body}. {question}.{ANSWER_CUE}":
        raise DataError(record.source, record.line, "input is not the released SVAMP form 'Body. Question. Answer: '",
                        "the svamp format rebuilds the prompt from the Body and Question fields")
    return f"{_full_stop(body)} {_full_stop(question)}{ANSWER_CUE}"


def _svamp_span(span: str) -> str:
    # "Now he has $ 12.." quotes the doubled full stop of the released join.
    return _DOUBLED_STOP.sub(r"\1", span)


def _unchanged_prompt(record: Record) -> str:
    return record.input


FORMATS: dict[str, Format] = {
    "mawps": Format("mawps", _question_then_cue, _without_cue,
                    "answer cue moved from the target into the prompt; target 'Answer: 84.0' -> '84.0'"),
    "svamp": Format("svamp", _svamp_prompt, _stripped_target,
                    "prompt rebuilt from Body and Question without the doubled full stops", _svamp_span),
    "asdiv": Format("asdiv", _question_then_cue, _stripped_target,
                    "whitespace before the answer cue collapsed; target with its unit, e.g. '6 (bags)'"),
    "gsm8k": Format("gsm8k", _question_then_cue, _stripped_target,
                    "as released: worked solutions ending in '#### N' (train), the bare number (test)"),
    "arc_e": Format("arc_e", _unchanged_prompt, _stripped_target, "as released: options one per line, letter target"),
}


# -- tasks ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """A released file (relative to the release root), or its annotated / unannotated part."""

    path: str
    format: Format
    part: Literal["all", "annotated", "unannotated"] = "all"


@dataclass(frozen=True)
class Task:
    """One downstream task: checker, training source and test splits (split name -> source)."""

    name: str
    checker: str
    description: str
    prompt_format: str
    train: Source
    tests: Mapping[str, Source]
    notes: tuple[str, ...] = ()

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", *self.tests)

    @property
    def target_format(self) -> str:
        """How training targets are normalised (the training source's format)."""
        return self.train.format.description


_F = FORMATS
_WORD_PROBLEM_PROMPT = "<question> Answer: "
_MAWPS_TESTS = {
    "test_iid": Source("MAWPS/mawps_test.jsonl", _F["mawps"]),
    "test_ood": Source("SVAMP/svamp_ood.jsonl", _F["svamp"]),
    "val": Source("MAWPS/mawps_val.jsonl", _F["mawps"]),
}
_MAWPS_NOTES = (
    "test_ood is all of SVAMP (train, val and test: the model never trains on SVAMP).",
    "MAWPS repeats questions: test items whose question is in the training file are removed.",
    "MAWPS text is pre-tokenised as released ('Tim 's cat had kittens .'); it is not rewritten.",
)

TASKS: dict[str, Task] = {
    "mawps": Task(
        "mawps", "mawps", "MAWPS arithmetic word problems; OOD: transfer to SVAMP",
        _WORD_PROBLEM_PROMPT, Source("MAWPS/mawps_train.jsonl", _F["mawps"]), _MAWPS_TESTS, _MAWPS_NOTES),
    "mawps_gpt4o": Task(
        "mawps_gpt4o", "mawps", "MAWPS with the second released annotation (mawps_train_gpt4o.jsonl)",
        _WORD_PROBLEM_PROMPT, Source("MAWPS/mawps_train_gpt4o.jsonl", _F["mawps"]), _MAWPS_TESTS, _MAWPS_NOTES),
    "svamp": Task(
        "svamp", "svamp", "SVAMP arithmetic word problems; OOD: transfer to MAWPS",
        _WORD_PROBLEM_PROMPT, Source("SVAMP/svamp_train.jsonl", _F["svamp"]),
        {"test_iid": Source("SVAMP/svamp_test.jsonl", _F["svamp"]),
         "test_ood": Source("MAWPS/mawps_ood.jsonl", _F["mawps"]),
         "val": Source("SVAMP/svamp_val.jsonl", _F["svamp"])},
        ("test_ood is all of MAWPS (train, val and test); its repeated questions are removed.",)),
    "gsm8k": Task(
        "gsm8k", "gsm8k", "GSM8K grade-school math; trained on annotated worked solutions",
        _WORD_PROBLEM_PROMPT, Source("GSM8k/gsm8k_val.jsonl", _F["gsm8k"]),
        {"test_iid": Source("GSM8k/gsm8k_test.jsonl", _F["gsm8k"])},
        ("train is gsm8k_val.jsonl: annotated items carved from the official training set.",
         "The model is trained to write a worked solution ending in '#### N'; the checker reads N.",
         "No OOD split is released.")),
    "asdiv": Task(
        "asdiv", "asdiv", "ASDiv word problems; the unannotated 20% is the test set",
        _WORD_PROBLEM_PROMPT, Source("ASDiv/merged_asdiv.jsonl", _F["asdiv"], "annotated"),
        {"test_iid": Source("ASDiv/merged_asdiv.jsonl", _F["asdiv"], "unannotated")},
        ("merged_asdiv.jsonl holds the 443 unannotated items first; they are the test set.",
         "Targets keep their unit ('6 (bags)'): the annotation's answer spans include it; the checker strips it.",
         "No OOD split is released.")),
    "arc_e": Task(
        "arc_e", "arc_e", "ARC-Easy multiple choice; the target is the option label",
        "<question>\\nA. <option>\\n...\\nAnswer: ", Source("ARC_E/ARC_E_train.jsonl", _F["arc_e"]),
        {"test_iid": Source("ARC_E/ARC_E_test.jsonl", _F["arc_e"]),
         "val": Source("ARC_E/ARC_E_val.jsonl", _F["arc_e"])},
        ("About 4% of items number their options 1-4 instead of A-D; the label is then a digit.",
         "No OOD split is released.")),
}


def get_task(name: str) -> Task:
    """The task of a name (``arc-e`` and ``arc_e`` are the same); see :data:`TASKS`."""
    key = name.strip().lower().replace("-", "_")
    try:
        return TASKS[key]
    except KeyError:
        raise ValueError(f"unknown task '{name}'; known tasks: {', '.join(TASKS)}") from None


# -- preparation ------------------------------------------------------------------------------

def question_key(prompt: str) -> str:
    """The comparison key of a question: lower-case words and numbers, the answer cue removed.

    Punctuation and spacing do not count, so the MAWPS form (``Tim 's cat .``), the SVAMP form
    (``house.. How``) and their normalised prompts give the same key.
    """
    return " ".join(_WORD.findall(_CUE_AT_END.sub("", prompt).lower()))


def _spans_found(text: str, relations: Sequence[Relation]) -> list[bool]:
    return [bool(find_occurrences(text, span)) for rel in relations for span in (rel.effect, *rel.causes)]


def _rewrite_spans(relations: tuple[Relation, ...], rewrite: Callable[[str], str]) -> tuple[Relation, ...]:
    return tuple(Relation(rewrite(rel.effect), tuple(rewrite(c) for c in rel.causes)) for rel in relations)


@dataclass
class _Split:
    source: Source
    released: int
    records: list[Record]
    counts: Counter[str]
    removed_in_train: int = 0
    removed_repeated: int = 0

    def stats(self, after_dedup: int) -> dict[str, Any]:
        annotated = [r for r in self.records if r.is_annotated]
        return {
            "source": self.source.path,
            "part": self.source.part,
            "format": self.source.format.name,
            "released": self.released,
            "removed_in_train": self.removed_in_train,
            "removed_repeated": self.removed_repeated,
            "after_dedup": after_dedup,
            "size": len(self.records),
            "annotated": len(annotated),
            "annotated_share": len(annotated) / len(self.records),
            "empty_annotations": sum(1 for r in annotated if not r.important),
            # Over every released record of the split, before deduplication and limits.
            "normalisation": {k: self.counts[k] for k in NORMALISATION_COUNTS},
        }


def _load_source(release: Path, source: Source) -> list[Record]:
    path = release / source.path
    if not path.is_file():
        raise DataError(path, None, "released file not found",
                        "pass --release pointing at the released data folder (../shared/data/cat-release)")
    records = load_records(path)
    if source.part == "annotated":
        records = [r for r in records if r.is_annotated]
    elif source.part == "unannotated":
        records = [r for r in records if not r.is_annotated]
    if not records:
        raise DataError(path, None, f"no {source.part} records", "the task expects part of the file to be of this kind")
    return records


def _normalise(records: Sequence[Record], source: Source) -> tuple[list[Record], Counter[str]]:
    """Records with the format's prompt and target; counts of changes and of annotation spans."""
    out: list[Record] = []
    counts: Counter[str] = Counter()
    for rec in records:
        fmt = source.format
        prompt, target = fmt.prompt(rec), fmt.target(rec)
        counts["prompts_changed"] += prompt != rec.input
        counts["targets_changed"] += target != rec.target
        important = rec.important
        if important and fmt.span is not None:
            important = _rewrite_spans(important, fmt.span)
            counts["spans_rewritten"] += sum(a != b for old, new in zip(rec.important, important)
                                             for a, b in zip((old.effect, *old.causes), (new.effect, *new.causes)))
        before = _spans_found(rec.text, rec.important or ())
        after = _spans_found(prompt + target, important or ())
        counts["spans"] += len(before)
        counts["spans_found_released"] += sum(before)
        counts["spans_found_normalised"] += sum(after)
        counts["spans_lost"] += sum(b and not a for b, a in zip(before, after))
        counts["spans_gained"] += sum(a and not b for b, a in zip(before, after))
        extra = dict(rec.extra)
        extra[ORIGIN_FIELD] = f"{source.path}:{rec.line}"
        out.append(Record(input=prompt, target=target, important=important, extra=extra, source=rec.source,
                          line=rec.line, annotation_repairs=rec.annotation_repairs))
    return out, counts


def _deduplicate(records: Sequence[Record], train_keys: set[str]) -> tuple[list[Record], int, int]:
    """Drop records whose question is in the training file or earlier in the list."""
    kept: list[Record] = []
    seen: set[str] = set()
    in_train = repeated = 0
    for rec in records:
        key = question_key(rec.input)
        if key in train_keys:
            in_train += 1
        elif key in seen:
            repeated += 1
        else:
            seen.add(key)
            kept.append(rec)
    return kept, in_train, repeated


def _shuffle_and_limit(records: list[Record], rng: random.Random, limit: int | None) -> list[Record]:
    # A shuffled file makes every prefix a random sample: train.limit and eval_limit take prefixes.
    records = list(records)
    rng.shuffle(records)
    return records[:limit] if limit is not None else records


def prepare_task(
    name: str,
    release_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``out_dir/<split>.jsonl`` for every split of task ``name``, plus ``card.json`` / ``card.md``.

    Test splits lose the items whose :func:`question_key` occurs in the whole training source (also
    when ``train_limit`` keeps only part of it) and repeats within the split. Every split is then
    shuffled with its own stream seeded by ``(task, split, seed)`` and cut to ``train_limit`` /
    ``test_limit`` items. Returns the card.
    """
    task = get_task(name)
    for label, limit in (("train_limit", train_limit), ("test_limit", test_limit)):
        if limit is not None and limit < 1:
            raise ValueError(f"{label} must be at least 1 (or None for every item), got {limit}")
    release, out = Path(release_dir), Path(out_dir)
    if not release.is_dir():
        raise DataError(release, None, "release folder not found",
                        "pass the folder holding MAWPS/, SVAMP/, GSM8k/, ASDiv/ and ARC_E/")

    raw_train = _load_source(release, task.train)
    train_records, counts = _normalise(raw_train, task.train)
    splits = {"train": _Split(task.train, len(raw_train), train_records, counts)}
    train_keys = {question_key(r.input) for r in train_records}
    for split, source in task.tests.items():
        raw = _load_source(release, source)
        normalised, counts = _normalise(raw, source)
        kept, in_train, repeated = _deduplicate(normalised, train_keys)
        if not kept:
            raise DataError(release / source.path, None, f"{split}: every item also occurs in the training file",
                            "check that the task's files are the released ones")
        splits[split] = _Split(source, len(raw), kept, counts, in_train, repeated)

    files: dict[str, str] = {}
    stats: dict[str, dict[str, Any]] = {}
    for split, part in splits.items():
        after_dedup = len(part.records)
        rng = random.Random(f"{task.name}/{split}/{seed}")
        part.records = _shuffle_and_limit(part.records, rng, train_limit if split == "train" else test_limit)
        files[split] = f"{split}.jsonl"
        write_records(out / files[split], part.records)
        stats[split] = part.stats(after_dedup)
    # Training repeats are the release's and are kept; the card says how many there are.
    stats["train"]["repeated_questions"] = len(train_records) - len(train_keys)

    card = {
        "task": task.name,
        "checker": get_checker(task.checker).to_json(),
        "description": task.description,
        "prompt_format": task.prompt_format,
        "target_format": task.target_format,
        "release": str(release),
        "seed": seed,
        "train_limit": train_limit,
        "test_limit": test_limit,
        "cattune_version": __version__,
        "files": files,
        "sizes": {split: s["size"] for split, s in stats.items()},
        "splits": stats,
        "notes": list(task.notes),
    }
    atomic_write_json(out / CARD_JSON, card)
    atomic_write_text(out / CARD_MD, render_card_markdown(card))
    logger.info("%s -> %s: %s", task.name, out, ", ".join(f"{k} {v}" for k, v in card["sizes"].items()))
    return card


def render_card_markdown(card: Mapping[str, Any]) -> str:
    """The task card as a short Markdown page."""
    lines = [
        f"# Task card: {card['task']}",
        "",
        f"{card['description']}. Prepared by cattune {card['cattune_version']} from `{card['release']}` "
        f"(seed {card['seed']}, train limit {card['train_limit']}, test limit {card['test_limit']}).",
        "",
        f"Prompt: `{card['prompt_format']}`; training targets: {card['target_format']}. "
        f"Checker: `{card['checker']['name']}` (cattune.checkers).",
        "",
        "| split | source | released | removed: in train / repeated | size | annotated | spans found released -> normalised (lost) |",
        "|---|---|---|---|---|---|---|",
    ]
    for split, s in card["splits"].items():
        source = s["source"] if s["part"] == "all" else f"{s['source']} ({s['part']})"
        spans = s["normalisation"]
        span_text = (f"{spans['spans_found_released']} -> {spans['spans_found_normalised']} ({spans['spans_lost']}) "
                     f"of {spans['spans']}") if spans["spans"] else "-"
        lines.append(f"| {split} | `{source}` | {s['released']} | {s['removed_in_train']} / {s['removed_repeated']} | "
                     f"{s['size']} | {s['annotated']} ({100 * s['annotated_share']:.0f}%) | {span_text} |")
    lines += ["", "Supervised rows per item for a tokenizer: `cattune data check train.jsonl --model MODEL`.", ""]
    lines += [f"- {note}" for note in card["notes"]]
    return "\n".join(lines) + "\n"
