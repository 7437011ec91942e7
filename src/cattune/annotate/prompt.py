"""The chat prompt that asks an assistant LLM to annotate one item.

Layout: a system message with the task, the rules and the reply format; then each human-written
example as a user turn (the text) and an assistant turn (its relations as JSON); then the item as
the last user turn. The text of an item follows :data:`ITEM_MARKER` to the end of the message, so
nothing the model (or a test server) reads is ambiguous about where the text starts and ends.
The messages are a pure function of the example set and the item: they are the cache key.
"""

from __future__ import annotations

import json

from cattune.annotate.examples import ExampleSet
from cattune.data.records import Record

ITEM_MARKER = "Text to annotate:\n"

_RULES = """\
You annotate texts with word-level causal relations, to teach a language model which earlier words \
each later word depends on. The task: {task}.

For the text you are given, list effects (words or phrases) and, for each, the earlier words or \
phrases that cause or determine it. Rules:
1. Copy every span exactly as it is written in the text: same spelling, case, spaces and \
punctuation. Never paraphrase, never add words.
2. Every cause must appear in the text before its effect.
3. The answer at the end of the text must be an effect, with the spans that determine it as causes.
4. Keep spans short: a number with its unit, a name, a short phrase.{guidance}

Reply with one JSON object and nothing else, in this form:
{{"important": [{{"<effect span>": ["<cause span>", "<cause span>"]}}, ...]}}"""


def item_message(record: Record) -> str:
    """The user turn for one item: where its answer is, then its full text."""
    target = record.target
    # A worked solution (GSM8K) is long; its beginning is enough to show where the answer starts.
    shown = json.dumps(target if len(target) <= 80 else target[:60] + "...", ensure_ascii=False)
    return f"The answer is the final part of the text: {shown}.\n{ITEM_MARKER}{record.text}"


def relations_json(record: Record) -> str:
    """A record's relations in the reply format (what an example's assistant turn says)."""
    relations = [{rel.effect: list(rel.causes)} for rel in record.important or ()]
    return json.dumps({"important": relations}, ensure_ascii=False)


def system_message(examples: ExampleSet, task: str | None = None) -> str:
    guidance = f"\n\n{examples.guidance}" if examples.guidance else ""
    return _RULES.format(task=(task or examples.task).rstrip("."), guidance=guidance)


def build_messages(examples: ExampleSet, record: Record, *, task: str | None = None) -> list[dict[str, str]]:
    """The chat messages that ask for ``record``'s annotation; ``task`` overrides the file's."""
    messages = [{"role": "system", "content": system_message(examples, task)}]
    for example in examples.examples:
        messages.append({"role": "user", "content": item_message(example)})
        messages.append({"role": "assistant", "content": relations_json(example)})
    messages.append({"role": "user", "content": item_message(record)})
    return messages


def feedback_message(error: str) -> str:
    """The user turn sent after an unusable reply: what was wrong, and what to send instead."""
    return (f"Your reply could not be used: {error}. Reply again with only the JSON object "
            '{"important": [{"<effect span>": ["<cause span>", ...]}, ...]}, every span copied '
            "exactly from the text, every cause before its effect.")
