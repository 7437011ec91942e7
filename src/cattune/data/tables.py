"""``Name: value`` fields in tabular prompts (STG and STG_H style).

Both benchmarks print their variables as ``Name: value`` separated by ``,`` or ``;`` (STG_H also
ends groups with ``.``). The parser returns each field with its character range, so tools can
annotate (the value as printed), redraw (counterfactual or flip tests) or locate spans.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

# A name is a run of words (letters, digits, spaces, parentheses) starting with a capital letter;
# a value is a signed number with an optional unit suffix such as "%", "Mbps" or "th".
_FIELD = re.compile(
    r"(?P<name>[A-Z][A-Za-z0-9 ()'/-]*?):\s(?P<value>-?\d+(?:\.\d+)?(?:%|[A-Za-z]+)?)(?=[,;.]?(?:\s|$))"
)


@dataclass(frozen=True)
class TableField:
    name: str
    value: str
    start: int  # start of "Name"
    value_start: int
    end: int  # end of the value

    @property
    def span(self) -> str:
        """The whole ``Name: value`` text."""
        return f"{self.name}: {self.value}"


def parse_table(text: str) -> list[TableField]:
    """All ``Name: value`` fields of a prompt, in order of appearance."""
    fields = []
    for m in _FIELD.finditer(text):
        name = m.group("name").strip()
        # Names after a sentence end ("... person. Smoking: 8") must not swallow earlier words.
        start = m.start("name") + (len(m.group("name")) - len(m.group("name").lstrip()))
        fields.append(TableField(name, m.group("value"), start, m.start("value"), m.end("value")))
    return fields


def replace_values(text: str, new_values: dict[str, str]) -> str:
    """``text`` with the values of the named fields replaced (names not present are ignored)."""
    out, last = [], 0
    for f in parse_table(text):
        if f.name in new_values:
            out.append(text[last:f.value_start])
            out.append(str(new_values[f.name]))
            last = f.end
    out.append(text[last:])
    return "".join(out)


def redraw_same_length(
    text: str, names: tuple[str, ...], draw: Callable[[str, random.Random], str], rng: random.Random,
    *, tries: int = 200,
) -> str:
    """``text`` with the named fields' values redrawn by ``draw(name, rng)`` conditioned on being
    printed with as many characters as before, and at least one value changed.

    Keeping every printed length keeps the prompt's token count and the position of every later
    token under tokenizers that split numbers into digits (Llama, Qwen2, SmolLM2), so a flip under
    this redraw cannot come from shifted positions. A field whose length no draw matches within
    ``tries`` keeps its value; when no field can change (STG: every value is "10") ``text`` is
    returned unchanged, and the flip rate counts it as an unchanged prompt.
    """
    old = {f.name: f.value for f in parse_table(text) if f.name in names}

    def same_length(name: str) -> str:
        for _ in range(tries):
            value = draw(name, rng)
            if len(value) == len(old[name]):
                return value
        return old[name]

    for _ in range(tries):
        new = {name: same_length(name) for name in old}
        if new != old:
            return replace_values(text, new)
    return text
