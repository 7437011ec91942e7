"""A word-level fast tokenizer built in-process: one token per word or punctuation run.

Token indices can be read off the text, so tests can state exact supervised rows and columns.
Words outside the small vocabulary become ``<unk>`` with correct offsets.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

WORDS = "Smoking Weight Exercise Yellow fingers Answer High Low Risk Tom has apples pears How many".split()
WORDS += [str(i) for i in range(20)] + [":", ",", ".", "?", "$"]


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")
