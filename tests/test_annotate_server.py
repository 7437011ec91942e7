"""Annotation against a real HTTP server on loopback that speaks the chat completions API and
injects faults: slow replies past the timeout, 429 with Retry-After, 500, malformed response
bodies, connection resets, unparseable replies and spans that are not in the text.

Guarantee tested for a run killed with SIGKILL and restarted: the output equals an uninterrupted
run's; no item whose outcome reached the cache before the kill is requested again; items asked
again are only those in flight at the kill (at most --concurrency) and transport failures (which
are never cached, so a rerun retries them).
"""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from cattune.annotate import AnnotateError, AnnotationCache, LLMAnnotator, RetryPolicy, annotate_file, annotate_records
from cattune.annotate.client import OpenAIChatBackend
from cattune.annotate.examples import load_example_set
from cattune.cli.main import main
from cattune.data.records import load_records
from fake_openai_server import EXAMPLES_YAML, EXPECTED_FAILURE_KIND, Action, FakeOpenAIServer, FaultPlan, fault_of, make_item

N_ITEMS = 1000
CONCURRENCY = 16
API_KEY = "sk-test-DO-NOT-LEAK-7f3a9c"
# 0.4 s: under a loaded CI machine a plain reply took over 0.25 s once, and the client then retried a
# reply the server had counted; slow replies (0.6 s) still time out.
FAST = dict(timeout=0.4, policy=RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, max_retry_after=5.0))
CLI_FAST = ["--timeout", "0.4", "--max-attempts", "4", "--backoff-base", "0.01", "--backoff-max", "0.05",
            "--max-retry-after", "5", "--concurrency", str(CONCURRENCY), "--no-progress"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fault-data")
    items = [make_item(i) for i in range(N_ITEMS)]
    (folder / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    (folder / "examples.yaml").write_text(EXAMPLES_YAML)
    return folder, items


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """An uninterrupted in-process run over all items, with its server's request log."""
    folder, items = dataset
    out = tmp_path_factory.mktemp("reference") / "annotated.jsonl"
    plan = FaultPlan(items)
    with FakeOpenAIServer(plan, plan.identify) as server:
        backend = OpenAIChatBackend(server.url, "fake-model", API_KEY, concurrency=CONCURRENCY, **FAST)
        annotator = LLMAnnotator(backend, load_example_set(folder / "examples.yaml"))
        started = time.monotonic()
        run = annotate_file(folder / "items.jsonl", out, annotator, concurrency=CONCURRENCY, progress=False)
        elapsed = time.monotonic() - started
    return out, run, server, elapsed


@pytest.mark.slow
def test_thousand_items_under_faults_each_annotated_or_failed_with_a_reason(dataset, reference):
    folder, items = dataset
    out, run, server, elapsed = reference
    assert elapsed < 40
    written = [json.loads(line) for line in out.read_text().splitlines()]
    report = json.loads(out.with_name("annotated.annotate-report.json").read_text())
    failed = {f["index"]: f for f in report["failures"]}
    ids = [w["id"] for w in written]
    # Every item exactly once: in the output or among the failures, never both, never twice.
    assert len(ids) == len(set(ids))
    assert sorted([int(i.split("-")[1]) for i in ids] + list(failed)) == list(range(N_ITEMS))
    assert run.summary.items == N_ITEMS and run.summary.annotated + run.summary.failed == N_ITEMS

    # Failures are exactly the items scripted to fail, each with its reason.
    expected_failed = {i: EXPECTED_FAILURE_KIND[fault_of(i)] for i in range(N_ITEMS) if fault_of(i) in EXPECTED_FAILURE_KIND}
    assert {i: f["kind"] for i, f in failed.items()} == expected_failed
    for i, f in failed.items():
        if fault_of(i) == "500_always":
            assert f["reason"] == "HTTP 500 (gave up after 4 attempts)"
        elif fault_of(i) == "bad_json_always":
            assert f["reason"].startswith("no usable annotation in 3 replies: no annotation found in the reply: it is not valid JSON")
        else:
            assert "no relation could be placed in the text (effect 'bananas' does not occur in the text" in f["reason"]
            assert f["reply"]

    # Annotated items carry exactly the server's correct relations; other fields are preserved.
    by_id = {w["id"]: w for w in written}
    for i, item in enumerate(items):
        if i in failed:
            continue
        got = by_id[item["id"]]
        assert got["meta"] == item["meta"] and got["target"] == item["target"] and got["input"] == item["input"]
        a, b = item["meta"]["n"]
        name = item["input"].split(": ", 1)[1].split(" ", 1)[0]
        assert got["important"] == [{"How many apples": [f"{name} has", "buys"]},
                                    {str(a + b): [f"{a} apples", f"{b} more apples", "How many apples"]}]

    # Invalid spans were dropped and counted: 5 per "some_spans_wrong" item, 4 per reply of "all_spans_wrong".
    n_some = sum(fault_of(i) == "some_spans_wrong" for i in range(N_ITEMS))
    n_all = sum(fault_of(i) == "all_spans_wrong" for i in range(N_ITEMS))
    assert run.summary.spans_dropped == 5 * n_some + 4 * n_all
    assert run.summary.dropped_by_reason["not_before_effect"] == n_some + n_all
    assert Counter(d["index"] for d in report["dropped"]).keys() == {i for i in range(N_ITEMS)
                                                                     if fault_of(i) in ("some_spans_wrong", "all_spans_wrong")}

    # The server saw what the client counted; the key was sent and the concurrency limit held.
    assert run.summary.usage.requests == len(server.log)
    assert run.summary.usage.completion_tokens == sum(r.usage[1] for r in server.log if r.usage)
    assert run.summary.usage.prompt_tokens == sum(r.usage[0] for r in server.log if r.usage)
    assert {r.authorization for r in server.log} == {f"Bearer {API_KEY}"}
    assert 1 < server.peak_in_flight <= CONCURRENCY

    # Retries: every transient fault was retried; Retry-After was honoured before the retry.
    for i in range(N_ITEMS):
        log = server.requests_for(i)
        fault = fault_of(i)
        if fault in ("slow_first", "bad_body_first", "reset_first", "429_retry_after_s", "429_retry_after_ms"):
            assert len(log) == 2, (i, fault)
        if fault == "500_twice":
            assert len(log) == 3
        if fault == "500_always":
            assert len(log) == 4
        if fault == "429_retry_after_s":
            assert log[1].time - log[0].time >= 0.99
        if fault == "429_retry_after_ms":
            assert log[1].time - log[0].time >= 0.149
        if fault == "bad_json_until_feedback":
            assert [r.conversation_turns for r in log] == [4, 6]  # the second request carries the feedback
        if fault == "clean":
            assert len(log) == 1


def _cli(folder, out, server_url, *extra):
    return [sys.executable, "-m", "cattune.cli.main", "-v", "annotate", "--in", str(folder / "items.jsonl"),
            "--out", str(out), "--examples", str(folder / "examples.yaml"), "--endpoint", server_url,
            "--model", "fake-model", *CLI_FAST, *extra]


@pytest.mark.slow
def test_run_killed_midway_resumes_to_the_same_output(dataset, reference, tmp_path):
    folder, items = dataset
    ref_out = reference[0]
    out = tmp_path / "annotated.jsonl"
    cache_path = tmp_path / "annotated.annotate-cache.jsonl"
    env = {**os.environ, "OPENAI_API_KEY": API_KEY, "HF_HUB_OFFLINE": "1"}
    plan = FaultPlan(items)
    with FakeOpenAIServer(plan, plan.identify) as server:
        # Files, not pipes: a child blocked on a full pipe would not be "midway", only stuck.
        first_stdout, first_stderr = (tmp_path / "first.stdout").open("wb"), (tmp_path / "first.stderr").open("wb")
        first = subprocess.Popen(_cli(folder, out, server.url), env=env, stdout=first_stdout, stderr=first_stderr)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and first.poll() is None:
            if cache_path.exists() and cache_path.read_bytes().count(b"\n") >= N_ITEMS // 3:
                break
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        first_stdout.close()
        first_stderr.close()
        assert first.returncode == -signal.SIGKILL, (tmp_path / "first.stderr").read_text()[-2000:]
        assert not out.exists()  # nothing half-written
        time.sleep(0.5)  # let requests the dead client had sent reach the log
        boundary = len(server.log)
        cached_keys = AnnotationCache(cache_path).keys()

        second = subprocess.run(_cli(folder, out, server.url), env=env, capture_output=True, timeout=120)
        assert second.returncode == 0, second.stderr.decode()[-2000:]
        log = list(server.log)

    # Same output as the uninterrupted run, same failures with the same reasons.
    assert out.read_bytes() == ref_out.read_bytes()
    report = json.loads(out.with_name("annotated.annotate-report.json").read_text())
    ref_report = json.loads(ref_out.with_name("annotated.annotate-report.json").read_text())
    assert [(f["index"], f["kind"], f["reason"]) for f in report["failures"]] == \
        [(f["index"], f["kind"], f["reason"]) for f in ref_report["failures"]]

    # Which items were finished (in the cache) when the process was killed?
    annotator = LLMAnnotator(OpenAIChatBackend(server.url, "fake-model", "unused"), load_example_set(folder / "examples.yaml"))
    keys = [annotator.cache_key(r) for r in load_records(folder / "items.jsonl")]
    assert cached_keys <= set(keys)
    finished_before_kill = {i for i, k in enumerate(keys) if k in cached_keys}
    cacheable = sum(fault_of(i) != "500_always" for i in range(N_ITEMS))
    assert N_ITEMS // 3 <= len(finished_before_kill) < cacheable, "the kill must land midway"
    assert report["summary"]["from_cache"] == len(finished_before_kill)

    before = {r.item for r in log[:boundary]}
    after = {r.item for r in log[boundary:]}
    assert not after & finished_before_kill, "an item finished before the kill was requested again"
    asked_twice = before & after
    in_flight = {i for i in asked_twice if fault_of(i) != "500_always"}
    assert len(in_flight) <= CONCURRENCY
    assert before | after == set(range(N_ITEMS))

    # The API key reached the server and nothing else.
    assert {r.authorization for r in log} == {f"Bearer {API_KEY}"}
    for blob in [second.stdout, second.stderr] + [p.read_bytes() for p in tmp_path.iterdir()]:
        assert API_KEY.encode() not in blob
    assert b"items 1000: annotated 925, failed 75" in second.stdout


def test_refused_credentials_stop_the_run(tmp_path, capsys, monkeypatch):
    items = [make_item(i) for i in range(40)]
    src = tmp_path / "items.jsonl"
    src.write_text("".join(json.dumps(item) + "\n" for item in items))
    (tmp_path / "examples.yaml").write_text(EXAMPLES_YAML)
    plan = FaultPlan(items)
    with FakeOpenAIServer(lambda messages, item, attempt: Action("status", status=401), plan.identify) as server:
        backend = OpenAIChatBackend(server.url, "fake-model", API_KEY, concurrency=4, **FAST)
        with pytest.raises(AnnotateError, match="refused the credentials"):
            annotate_records(load_records(src), LLMAnnotator(backend, load_example_set(tmp_path / "examples.yaml")),
                             concurrency=4, progress=False)
        assert len(server.log) < 40  # the run stopped instead of failing every item
        monkeypatch.delenv("CATTUNE_TEST_MISSING_KEY", raising=False)
        code = main(["annotate", "--in", str(src), "--out", str(tmp_path / "out.jsonl"), "--examples",
                     str(tmp_path / "examples.yaml"), "--endpoint", server.url, "--model", "m",
                     "--api-key-env", "CATTUNE_TEST_MISSING_KEY", "--no-progress"])
    assert code == 2
    assert "CATTUNE_TEST_MISSING_KEY is not set" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()
