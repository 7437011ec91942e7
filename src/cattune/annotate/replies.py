"""Reading an assistant's reply: find the JSON in it and turn it into proposed relations.

Chat models wrap JSON in prose or Markdown fences, add trailing commas, or answer with a bare list
or a plain ``{effect: [causes]}`` mapping instead of the requested ``{"important": [...]}``. All of
these are accepted. A reply that still yields no relation raises :class:`ReplyError` with a message
written to be sent back to the model, so it can correct itself on a retry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",(\s*[\]}])")


class ReplyError(ValueError):
    """A reply that cannot be turned into relations; the message says what is wrong with it."""


def _whole_decodes(reply: str) -> Iterator[Any]:
    """The reply, then each fenced block, decoded as a whole (with trailing commas removed)."""
    for text in [reply.strip()] + [m.group(1).strip() for m in _FENCE.finditer(reply)]:
        for variant in (text, _TRAILING_COMMA.sub(r"\1", text)):
            try:
                yield json.loads(variant)
                break
            except json.JSONDecodeError:
                pass


def _region_end(text: str, start: int) -> int:
    """Where the bracketed region opened at ``start`` closes (brackets inside JSON strings
    ignored), or ``len(text)`` when it never closes (a reply cut off mid-JSON)."""
    depth, in_string, escaped = 0, False, False
    for pos in range(start, len(text)):
        ch = text[pos]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth == 0:
                return pos + 1
    return len(text)


def _embedded_decodes(reply: str) -> Iterator[Any]:
    """JSON objects and arrays embedded in prose, outermost first.

    Nothing inside a region already tried is tried again: the inner objects of a decoded value
    are not separate candidates, and neither are the fragments of broken or truncated JSON (a
    reply cut off after its first relation must fail, not pass as that one relation).
    """
    decoder = json.JSONDecoder()
    for variant in (reply, _TRAILING_COMMA.sub(r"\1", reply)):
        skip_until = 0
        for match in re.finditer(r"[\[{]", variant):
            if match.start() < skip_until:
                continue
            try:
                value, end = decoder.raw_decode(variant, match.start())
            except json.JSONDecodeError:
                skip_until = _region_end(variant, match.start())
                continue
            skip_until = end
            yield value


def extract_json(reply: str) -> Any:
    """The JSON annotation in ``reply``.

    The first decoded value shaped like an annotation wins (most replies decode whole on the first
    try). Failing that, a reply that is JSON as a whole is returned so its shape can be reported.
    Raises :class:`ReplyError` when no usable JSON is found.
    """
    whole: list[Any] = []
    for value in _whole_decodes(reply):
        if _looks_like_annotation(value):
            return value
        whole.append(value)
    for value in _embedded_decodes(reply):
        if _looks_like_annotation(value):
            return value
    if whole:
        return whole[0]
    snippet = reply.strip().replace("\n", " ")
    if not snippet:
        raise ReplyError("the reply is empty")
    try:
        json.loads(reply.strip())
        problem = "it holds no JSON object or array"
    except json.JSONDecodeError as exc:
        problem = f"it is not valid JSON ({exc.msg} at character {exc.pos})"
    short = snippet if len(snippet) <= 80 else snippet[:77] + "..."
    raise ReplyError(f"no annotation found in the reply: {problem}; the reply was {short!r}")


def _looks_like_annotation(value: Any) -> bool:
    if isinstance(value, dict):
        return "important" in value or (bool(value) and all(isinstance(v, (list, str)) for v in value.values()))
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _causes(value: Any, effect: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(c, (str, int, float)) and not isinstance(c, bool) for c in value):
        return [str(c) for c in value]
    raise ReplyError(f"the causes of effect {effect!r} must be a list of strings, got {json.dumps(value)[:60]}")


def _relations_from(value: Any) -> list[tuple[str, list[str]]]:
    if isinstance(value, dict) and "important" in value:
        value = value["important"]
    if isinstance(value, dict):
        # A plain mapping {effect: [causes], ...}.
        return [(str(effect), _causes(causes, str(effect))) for effect, causes in value.items()]
    if not isinstance(value, list):
        raise ReplyError(f"'important' must be a list of {{effect: [causes]}} objects, got {type(value).__name__}")
    relations: list[tuple[str, list[str]]] = []
    for item in value:
        if not isinstance(item, dict):
            raise ReplyError(f"each relation must be an object like {{\"effect\": [\"cause\"]}}, got {json.dumps(item)[:60]}")
        if set(item) >= {"effect", "causes"} and isinstance(item["effect"], str):
            relations.append((item["effect"], _causes(item["causes"], item["effect"])))
            continue
        for effect, causes in item.items():
            relations.append((str(effect), _causes(causes, str(effect))))
    return relations


def parse_reply(reply: str) -> list[tuple[str, list[str]]]:
    """Proposed ``(effect, causes)`` relations in a reply, in order; not yet checked against text.

    Raises :class:`ReplyError` when the reply holds no JSON, has the wrong shape, or holds no
    relation at all (an empty annotation is an error, never a result).
    """
    relations = _relations_from(extract_json(reply))
    if not relations:
        raise ReplyError('the reply holds no relation; list at least one {"effect": ["cause", ...]}')
    return relations
