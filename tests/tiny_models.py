"""Tiny randomly initialised models and an in-process tokenizer, so tests run in seconds.

The tokenizer is a byte-level BPE (GPT-2 style: offsets that include the leading space) trained
on a few hundred sentences in the STG and word-problem styles; the models are Llama (with grouped-
query attention), Qwen2 and GPT-2 shapes small enough to train for a few steps on one CPU core.
"""

from __future__ import annotations

import functools
import random

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

EOS = "<eos>"
PAD = "<pad>"

_NAMES = ["Smoking", "Weight", "Exercise", "Yellow fingers", "Clothing size", "Hormones", "Certain gene", "Room size"]


def _corpus(n: int = 400) -> list[str]:
    rng = random.Random(0)
    lines = []
    for _ in range(n):
        pairs = ", ".join(f"{name}: {rng.randint(0, 15)}" for name in rng.sample(_NAMES, len(_NAMES)))
        lines.append(f"Here is the statistical data for a person. Please predict the probability of cancer. {pairs} Answer: High Risk Low Risk")
        lines.append(f"Ruth starts with {rng.randint(1, 99)} apples. She shares {rng.randint(1, 9)} with Peter. How many apples does Ruth end with? Answer: {rng.randint(1, 99)}.0")
    return lines


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[PAD, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)


def tiny_llama(vocab_size: int | None = None, *, seed: int = 0, attn_implementation: str = "sdpa", **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    cfg = dict(
        vocab_size=vocab_size or len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    cfg.update(overrides)
    config = LlamaConfig(**cfg)
    config._attn_implementation = attn_implementation
    return LlamaForCausalLM(config).eval()


def tiny_qwen2(*, seed: int = 0, attn_implementation: str = "sdpa", **overrides) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    cfg = dict(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
    )
    cfg.update(overrides)
    config = Qwen2Config(**cfg)
    config._attn_implementation = attn_implementation
    return Qwen2ForCausalLM(config).eval()


def tiny_gpt2(*, seed: int = 0, attn_implementation: str = "sdpa", **overrides) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    cfg = dict(
        vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=256,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
        attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0,
    )
    cfg.update(overrides)
    config = GPT2Config(**cfg)
    config._attn_implementation = attn_implementation
    return GPT2LMHeadModel(config).eval()


TINY_MODELS = {"llama": tiny_llama, "qwen2": tiny_qwen2, "gpt2": tiny_gpt2}


def save_tiny(tmp_path, kind: str = "llama", **kwargs):
    """Save a tiny model and the tokenizer as a model folder loadable by ``--model DIR``."""
    model = TINY_MODELS[kind](**kwargs)
    path = tmp_path / f"tiny-{kind}"
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
