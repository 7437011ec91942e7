"""The resume cache and the retry policy."""

import random

import pytest

from cattune.annotate.backoff import RetryPolicy, parse_retry_after
from cattune.annotate.cache import AnnotationCache
from cattune.annotate.outcome import ANNOTATED, REPLY, ItemOutcome, Usage, failure
from cattune.annotate.validate import DroppedSpan
from cattune.data.records import Relation


def _outcome(effect="b"):
    return ItemOutcome(ANNOTATED, (Relation(effect, ("a", "c")),), (DroppedSpan("cause", "z", effect, "not_in_text"),),
                       3, reply='{"x": 1}', usage=Usage(10, 5, 2))


def test_cache_round_trip_and_last_entry_wins(tmp_path):
    path = tmp_path / "c.jsonl"
    cache = AnnotationCache(path)
    cache.put("k1", _outcome())
    cache.put("k2", failure("no usable annotation", REPLY, reply="junk", usage=Usage(1, 1, 1)))
    cache.put("k2", _outcome("d"))
    again = AnnotationCache(path)
    assert len(again) == 2 and "k1" in again and again.get("missing") is None
    assert again.get("k1") == _outcome()
    assert again.get("k2").relations == (Relation("d", ("a", "c")),)


def test_a_line_cut_by_a_kill_is_ignored_and_fenced_off(tmp_path):
    path = tmp_path / "c.jsonl"
    AnnotationCache(path).put("k1", _outcome())
    with path.open("ab") as fh:
        fh.write(b'{"key": "k2", "outcome": {"status": "annot')  # what a killed writer could leave
    cache = AnnotationCache(path)
    assert len(cache) == 1 and cache.unreadable_lines == 1
    cache.put("k3", _outcome())
    again = AnnotationCache(path)
    assert again.keys() == {"k1", "k3"} and again.unreadable_lines == 1


def test_retry_delays_grow_jitter_and_respect_retry_after():
    policy = RetryPolicy(max_attempts=5, base_delay=0.5, max_delay=3.0)
    rng = random.Random(0)
    for retry in range(6):
        ceiling = min(3.0, 0.5 * 2 ** retry)
        delays = [policy.delay(retry, rng=rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.8 * ceiling and min(delays) < 0.2 * ceiling  # jittered across the range
    assert all(policy.delay(0, retry_after=2.0, rng=rng) >= 2.0 for _ in range(50))
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


def test_retry_after_header_forms():
    assert parse_retry_after({"Retry-After": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    assert parse_retry_after({"retry-after-ms": "150", "retry-after": "9"}) == 0.15
    assert parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == 10.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({"Retry-After": "-3"}) is None
    assert parse_retry_after({}) is None
