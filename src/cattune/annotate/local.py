"""A Hugging Face causal LM run in-process as the assistant LLM (no server, no network).

Useful offline and as a smoke test: the embedded SmolLM2-135M follows the reply format now and
then, and its spans are often not in the text; validation drops and counts them. Decoding is
greedy with a bound on new tokens, so a rerun gives the same replies and the cache stays valid.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from cattune.annotate.llm import Completion
from cattune.annotate.outcome import Usage

logger = logging.getLogger(__name__)


class LocalChatBackend:
    """Greedy chat completion with a transformers model loaded by :mod:`cattune.models`."""

    # One model, one forward pass at a time: threads would only contend for the same cores.
    max_concurrency: int | None = 1

    def __init__(self, model_name: str, *, max_new_tokens: int = 256, model: Any = None, tokenizer: Any = None):
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        from cattune.models import load_model, load_tokenizer

        self.model_name = model_name
        self.max_new_tokens = max_new_tokens
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_name)
        self.model = (model if model is not None else load_model(model_name)).eval()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalChatBackend(model_name={self.model_name!r})"

    def identity(self) -> dict[str, Any]:
        return {"kind": "local", "model": self.model_name, "max_new_tokens": self.max_new_tokens, "decoding": "greedy"}

    def close(self) -> None:
        pass

    def _prompt_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            encoded = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
            # transformers returns a BatchEncoding or a plain id list depending on the version.
            ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
            return list(ids[0] if ids and isinstance(ids[0], list) else ids)
        # No chat template: a plain transcript that ends where the assistant should continue.
        text = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages) + "Assistant: "
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def complete(self, messages: Sequence[dict[str, str]]) -> Completion:
        import torch

        ids = self._prompt_ids(messages)
        with self._lock, torch.no_grad():
            input_ids = torch.tensor([ids], device=self.model.device)
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=False,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id,
            )
        new = output[0, len(ids):].tolist()
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        truncated = len(new) >= self.max_new_tokens and new[-1] != self.tokenizer.eos_token_id
        return Completion(text, Usage(len(ids), len(new), 1), truncated)
