"""Annotation by an assistant LLM: prompt, reply, validation, and a bounded conversation of
corrections when the reply cannot be used.

The model is reached through a :class:`ChatBackend` (an OpenAI-compatible endpoint, or a local
Hugging Face model); the backend owns transport retries, this module owns reply retries. A reply
that cannot be parsed, or whose spans all fail validation, is answered with the reason and the
model is asked again, at most ``max_reply_retries`` times; after that the item fails with the last
reason. Partly valid replies are kept with their invalid spans dropped and counted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cattune.annotate.examples import ExampleSet
from cattune.annotate.outcome import ANNOTATED, REPLY, REQUEST, TRANSPORT, ItemOutcome, Usage, failure
from cattune.annotate.prompt import build_messages, feedback_message
from cattune.annotate.replies import ReplyError, parse_reply
from cattune.annotate.validate import DroppedSpan, validate_relations
from cattune.data.records import Record

# Bump when the prompt layout or the meaning of a cached outcome changes, so old caches miss.
CACHE_FORMAT = 1


@dataclass(frozen=True)
class Completion:
    """One chat reply, what it cost, and whether it was cut off by the length limit."""

    text: str
    usage: Usage
    truncated: bool = False


class TransportError(Exception):
    """The endpoint could not give a reply for this item (after the backend's own retries)."""

    def __init__(self, message: str, usage: Usage | None = None):
        super().__init__(message)
        self.usage = usage or Usage()


class RequestRejected(Exception):
    """The endpoint refused this particular request (e.g. HTTP 400: prompt too long)."""

    def __init__(self, message: str, usage: Usage | None = None):
        super().__init__(message)
        self.usage = usage or Usage()


class AnnotateError(RuntimeError):
    """A problem that stops the whole run (bad credentials, unknown model, bad settings)."""


class ChatBackend(Protocol):
    """Something that answers chat messages."""

    max_concurrency: int | None

    def identity(self) -> dict[str, Any]:
        """What determines the reply besides the messages (endpoint, model, sampling settings);
        part of the cache key. Never contains credentials."""

    def complete(self, messages: Sequence[dict[str, str]]) -> Completion:
        """One reply; raises :class:`TransportError`, :class:`RequestRejected` or
        :class:`AnnotateError`."""

    def close(self) -> None:
        """Stop waiting and retrying: the run is being cancelled."""


def _describe_dropped(dropped: Sequence[DroppedSpan]) -> str:
    reasons = {
        "not_in_text": "does not occur in the text",
        "not_before_effect": "does not occur before its effect",
        "empty": "is empty",
        "duplicate": "is repeated",
    }
    parts = [f"{d.role} {d.span!r} {reasons[d.reason]}" for d in dropped if d.reason in reasons]
    shown = "; ".join(parts[:4]) + (f"; and {len(parts) - 4} more" if len(parts) > 4 else "")
    return f"no relation could be placed in the text ({shown})"


class LLMAnnotator:
    """Annotates records by asking an assistant LLM, prompted with human-written examples."""

    def __init__(self, backend: ChatBackend, examples: ExampleSet, *, task: str | None = None,
                 max_reply_retries: int = 2):
        if max_reply_retries < 0:
            raise ValueError("max_reply_retries must not be negative")
        self.backend = backend
        self.examples = examples
        self.task = task
        self.max_reply_retries = max_reply_retries
        self.max_concurrency = backend.max_concurrency

    def identity(self) -> dict[str, Any]:
        return {"backend": self.backend.identity(), "examples": self.examples.source, "task": self.task}

    def cache_key(self, record: Record) -> str:
        """A hash of everything that determines the annotation: backend settings and messages."""
        payload = {"format": CACHE_FORMAT, "backend": self.backend.identity(),
                   "messages": build_messages(self.examples, record, task=self.task)}
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def close(self) -> None:
        self.backend.close()

    def annotate(self, record: Record) -> ItemOutcome:
        messages = build_messages(self.examples, record, task=self.task)
        usage = Usage()
        reply = ""
        error = ""
        dropped: tuple[DroppedSpan, ...] = ()
        replies = 0
        for _ in range(self.max_reply_retries + 1):
            try:
                completion = self.backend.complete(messages)
            except TransportError as exc:
                usage.add(exc.usage)
                return failure(str(exc), TRANSPORT, reply=reply, usage=usage)
            except RequestRejected as exc:
                usage.add(exc.usage)
                return failure(str(exc), REQUEST, reply=reply, usage=usage)
            usage.add(completion.usage)
            replies += 1
            reply = completion.text
            try:
                proposed = parse_reply(reply)
            except ReplyError as exc:
                error, dropped = str(exc), ()
                if completion.truncated:
                    error = f"the reply was cut off at the length limit, list fewer and shorter relations ({error})"
            else:
                checked = validate_relations(record.text, proposed)
                if checked.relations:
                    return ItemOutcome(ANNOTATED, checked.relations, checked.dropped, checked.spans_kept,
                                       reply=reply, usage=usage)
                error, dropped = _describe_dropped(checked.dropped), checked.dropped
            messages = [*messages, {"role": "assistant", "content": reply},
                        {"role": "user", "content": feedback_message(error)}]
        plural = "the reply" if replies == 1 else f"{replies} replies"
        return failure(f"no usable annotation in {plural}: {error}", REPLY, reply=reply, usage=usage, dropped=dropped)
