"""How long to wait before retrying a request: exponential backoff with full jitter, at least
as long as the server's ``Retry-After`` asks (up to a cap).

Full jitter (a uniform draw between 0 and the exponential ceiling) spreads the retries of many
concurrent workers that failed together, so they do not hit a recovering server in lockstep.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds on retrying one request.

    ``max_attempts`` counts the first try. The ceiling of attempt ``n`` (0-based retry index) is
    ``min(max_delay, base_delay * 2**n)``; a ``Retry-After`` longer than ``max_retry_after`` is
    not honoured and the item fails instead of stalling the run.
    """

    max_attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 60.0
    max_retry_after: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("delays must not be negative")

    def delay(self, retry: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first retry)."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** retry))
        jittered = (rng or random).uniform(0.0, ceiling)
        if retry_after is not None:
            return max(jittered, retry_after)
        return jittered


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds a response asks the client to wait (``retry-after-ms``, ``retry-after`` as
    seconds or as an HTTP date), or ``None`` when it does not say or says nonsense."""
    lowered = {k.lower(): v for k, v in headers.items()}
    value = lowered.get("retry-after-ms")
    if value is not None:
        try:
            ms = float(value)
            if 0 <= ms < float("inf"):
                return ms / 1000.0
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
        return seconds if 0 <= seconds < float("inf") else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
