"""What annotating one item produced: its relations, what was dropped, or why it failed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cattune.annotate.validate import DroppedSpan
from cattune.data.records import Relation

ANNOTATED = "annotated"
FAILED = "failed"

# Failure kinds. Only outcomes that cost a model reply are cached: a "reply" failure (the model
# answered, repeatedly, with nothing usable) is final; "transport" (the endpoint could not be
# reached or kept failing) and "request" (the endpoint refused the request) are retried by a rerun.
REPLY = "reply"
TRANSPORT = "transport"
REQUEST = "request"
RULES = "rules"
CACHEABLE_FAILURES = (REPLY,)


@dataclass
class Usage:
    """Tokens and requests one item cost (zero for the rule-based backend)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.requests += other.requests

    def to_json(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "requests": self.requests}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Usage:
        return cls(int(obj.get("prompt_tokens", 0)), int(obj.get("completion_tokens", 0)), int(obj.get("requests", 0)))


@dataclass
class ItemOutcome:
    """The result of annotating one item.

    ``status`` is :data:`ANNOTATED` (``relations`` is non-empty) or :data:`FAILED` (``reason``
    says why, ``failure_kind`` says whether a rerun will try again). ``reply`` is the model's
    last reply, kept for auditing.
    """

    status: str
    relations: tuple[Relation, ...] = ()
    dropped: tuple[DroppedSpan, ...] = ()
    spans_kept: int = 0
    reason: str = ""
    failure_kind: str = ""
    reply: str = ""
    usage: Usage = field(default_factory=Usage)
    from_cache: bool = False

    @property
    def cacheable(self) -> bool:
        return self.status == ANNOTATED or self.failure_kind in CACHEABLE_FAILURES

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "important": [{r.effect: list(r.causes)} for r in self.relations],
            "dropped": [d.to_json() for d in self.dropped],
            "spans_kept": self.spans_kept,
            "reason": self.reason,
            "failure_kind": self.failure_kind,
            "reply": self.reply,
            "usage": self.usage.to_json(),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ItemOutcome:
        relations = tuple(Relation(effect, tuple(causes)) for item in obj["important"] for effect, causes in item.items())
        dropped = tuple(DroppedSpan(d["role"], d["span"], d["effect"], d["reason"]) for d in obj["dropped"])
        return cls(
            status=obj["status"],
            relations=relations,
            dropped=dropped,
            spans_kept=int(obj["spans_kept"]),
            reason=obj["reason"],
            failure_kind=obj["failure_kind"],
            reply=obj["reply"],
            usage=Usage.from_json(obj["usage"]),
        )


def failure(reason: str, kind: str, *, reply: str = "", usage: Usage | None = None,
            dropped: tuple[DroppedSpan, ...] = ()) -> ItemOutcome:
    return ItemOutcome(FAILED, dropped=dropped, reason=reason, failure_kind=kind, reply=reply, usage=usage or Usage())
