"""Records -> token ids, next-token labels and the sparse causal rows, for one tokenizer.

The prompt (``input``) and the target are tokenised separately and concatenated, followed by the
end-of-sequence token: evaluation feeds the prompt alone and lets the model continue, so training
must see the same prompt tokens (tokenising ``input + target`` in one go can merge tokens across
the boundary). Only the target tokens and the eos carry the next-token loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cattune.data.records import Record
from cattune.masks import CausalRows, causal_rows

IGNORE_INDEX = -100


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]
    offsets: list[tuple[int, int]]
    text: str
    rows: CausalRows
    truncated: bool


def encode_prompt(tokenizer: Any, prompt: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of a prompt, with the tokenizer's own special prefix."""
    enc = tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    # Some tokenizers append EOS as a special token; a prompt must end where the answer begins.
    if ids and tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id and offsets[-1] == (0, 0):
        ids, offsets = ids[:-1], offsets[:-1]
    return ids, offsets


def encode_record(
    tokenizer: Any,
    record: Record,
    *,
    max_length: int = 256,
    skip_adjacent: bool = True,
    with_rows: bool = True,
) -> EncodedExample:
    """Encode a training record: ``prompt + target + eos``, labels on target and eos only."""
    p_ids, p_off = encode_prompt(tokenizer, record.input)
    t_enc = tokenizer(record.target, add_special_tokens=False, return_offsets_mapping=True)
    shift = len(record.input)
    t_ids = list(t_enc["input_ids"])
    t_off = [(a + shift, b + shift) for a, b in t_enc["offset_mapping"]]
    eos = tokenizer.eos_token_id
    ids = p_ids + t_ids + ([eos] if eos is not None else [])
    offsets = p_off + t_off + ([(0, 0)] if eos is not None else [])
    labels = [IGNORE_INDEX] * len(p_ids) + t_ids + ([eos] if eos is not None else [])
    text = record.text
    if with_rows and record.important:
        rows = causal_rows(text, offsets, record.important, max_length=max_length, skip_adjacent=skip_adjacent)
    else:
        rows = causal_rows(text, offsets, (), max_length=max_length)
    truncated = len(ids) > max_length
    return EncodedExample(ids[:max_length], labels[:max_length], offsets[:max_length], text, rows, truncated)
