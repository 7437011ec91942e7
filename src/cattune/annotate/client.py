"""An OpenAI-compatible chat completions endpoint as a :class:`~cattune.annotate.llm.ChatBackend`.

Works with any server that speaks the chat completions API (OpenAI, vLLM, llama.cpp, Ollama, a
gateway). The ``openai`` client's own retries are switched off: this module retries timeouts,
connection errors, malformed responses, 408/409/429 and 5xx itself, with exponential backoff,
full jitter and the server's ``Retry-After``, so the policy is the same for every server and is
testable. Authentication and "model not found" errors stop the run; other 4xx fail the item.

The API key is read from an environment variable and handed to the client only; it is not stored
on this object's public attributes, in the cache key, in logs or in any file.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
from collections.abc import Sequence
from typing import Any

from cattune.annotate.backoff import RetryPolicy, parse_retry_after
from cattune.annotate.llm import AnnotateError, Completion, RequestRejected, TransportError
from cattune.annotate.outcome import Usage

logger = logging.getLogger(__name__)

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
_TRANSIENT_STATUS = (408, 409, 429)


def api_key_from_env(name: str = DEFAULT_API_KEY_ENV) -> str:
    """The API key in environment variable ``name``; an :class:`AnnotateError` if it is unset."""
    key = os.environ.get(name)
    if not key:
        raise AnnotateError(f"environment variable {name} is not set: export the endpoint's API key in it "
                            f"(for a server without authentication any value works, e.g. `export {name}=none`)")
    return key


class OpenAIChatBackend:
    """Chat completions over HTTP with the ``openai`` client, retried by :class:`RetryPolicy`."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        policy: RetryPolicy | None = None,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        concurrency: int = 8,
        api_key_env: str = DEFAULT_API_KEY_ENV,
    ):
        from openai import OpenAI

        if timeout <= 0:
            raise AnnotateError("the request timeout must be positive")
        self.base_url = base_url
        self.model = model
        self.timeout = timeout
        self.policy = policy or RetryPolicy()
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.max_concurrency = concurrency
        self._api_key_env = api_key_env
        self._client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout)
        self._stop = threading.Event()
        self._rng = random.Random()

    def __repr__(self) -> str:
        return f"OpenAIChatBackend(base_url={self.base_url!r}, model={self.model!r})"

    def identity(self) -> dict[str, Any]:
        return {"kind": "openai", "base_url": self.base_url, "model": self.model,
                "temperature": self.temperature, "max_tokens": self.max_tokens}

    def close(self) -> None:
        self._stop.set()

    def _request(self, messages: Sequence[dict[str, str]]) -> Completion:
        """One HTTP request; raises ``_Retryable`` for faults worth retrying."""
        import openai

        try:
            response = self._client.chat.completions.create(
                model=self.model, messages=list(messages), temperature=self.temperature, max_tokens=self.max_tokens,
            )
        except openai.APITimeoutError:
            raise _Retryable(f"timed out after {self.timeout:g} s") from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise _Retryable(f"connection error ({type(cause).__name__})") from None
        except openai.APIStatusError as exc:
            status = exc.status_code
            if status >= 500 or status in _TRANSIENT_STATUS:
                raise _Retryable(f"HTTP {status}", parse_retry_after(exc.response.headers)) from None
            if status in (401, 403):
                raise AnnotateError(f"the endpoint {self.base_url} refused the credentials (HTTP {status}); "
                                    f"check the key in ${self._api_key_env}") from None
            if status == 404:
                raise AnnotateError(f"HTTP 404 from {self.base_url}: check --endpoint (it usually ends in /v1) "
                                    f"and --model {self.model!r}") from None
            raise RequestRejected(f"the endpoint refused the request: HTTP {status}: {_error_message(exc)}") from None
        except (json.JSONDecodeError, openai.APIResponseValidationError) as exc:
            raise _Retryable(f"malformed response body ({type(exc).__name__})") from None
        choices = getattr(response, "choices", None)
        if not choices or getattr(choices[0], "message", None) is None:
            raise _Retryable("response without a message")
        usage = getattr(response, "usage", None)
        return Completion(
            text=choices[0].message.content or "",
            usage=Usage(getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0, 1),
            truncated=getattr(choices[0], "finish_reason", None) == "length",
        )

    def complete(self, messages: Sequence[dict[str, str]]) -> Completion:
        failures = 0
        while True:
            if self._stop.is_set():
                raise TransportError("cancelled", Usage(requests=failures))
            try:
                completion = self._request(messages)
            except _Retryable as fault:
                failures += 1
                if failures >= self.policy.max_attempts:
                    raise TransportError(f"{fault.message} (gave up after {failures} attempts)", Usage(requests=failures)) from None
                if fault.retry_after is not None and fault.retry_after > self.policy.max_retry_after:
                    raise TransportError(f"{fault.message} with Retry-After {fault.retry_after:g} s, longer than the "
                                         f"{self.policy.max_retry_after:g} s allowed", Usage(requests=failures)) from None
                wait = self.policy.delay(failures - 1, fault.retry_after, self._rng)
                logger.debug("%s; retry %d in %.2f s", fault.message, failures, wait)
                self._stop.wait(wait)
                continue
            completion.usage.requests += failures
            return completion


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


def _error_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:200]
    return str(getattr(exc, "message", exc))[:200]
