"""The LLM annotation loop and whole-dataset runs, against an in-memory chat backend."""

import json
import threading

import pytest

from cattune.annotate import AnnotateError, AnnotationCache, LLMAnnotator, annotate_file, annotate_records
from cattune.annotate.examples import load_example_set
from cattune.annotate.llm import Completion, TransportError
from cattune.annotate.outcome import Usage
from cattune.annotate.prompt import ITEM_MARKER
from cattune.data.records import DataError, load_records, parse_record


class ScriptedBackend:
    """Answers by item text: a list of replies (or exceptions) per text, one per request."""

    max_concurrency = 4

    def __init__(self, script):
        self.script = script
        self.calls = []
        self.lock = threading.Lock()

    def identity(self):
        return {"kind": "scripted"}

    def close(self):
        pass

    def complete(self, messages):
        text = messages[-1]["content"]
        for m in reversed(messages):
            if m["role"] == "user" and ITEM_MARKER in m["content"]:
                text = m["content"].split(ITEM_MARKER, 1)[1]
                break
        with self.lock:
            n = sum(1 for t, _ in self.calls if t == text)
            self.calls.append((text, messages))
        replies = self.script[text]
        reply = replies[min(n, len(replies) - 1)]
        if isinstance(reply, Exception):
            raise reply
        return reply if isinstance(reply, Completion) else Completion(reply, Usage(100, 10, 1))


def _rec(i, **extra):
    return {"id": i, "input": f"Sam has {i} pens and buys 2 more. How many pens? Answer: ", "target": i + 2, **extra}


def _good(i):
    return json.dumps({"important": [{str(i + 2): [f"{i} pens", "buys 2 more"]}]})


@pytest.fixture
def examples():
    return load_example_set("word_problems")


def test_unusable_replies_are_sent_back_then_fail_with_the_reason(examples):
    rec = parse_record(_rec(1))
    backend = ScriptedBackend({rec.text: ["no idea", '{"important": [{"3": ["7 pens"]}]}', _good(1)]})
    outcome = LLMAnnotator(backend, examples, max_reply_retries=2).annotate(rec)
    assert outcome.status == "annotated" and outcome.usage == Usage(300, 30, 3)
    # The second request carries the first reply and why it was refused.
    second = backend.calls[1][1]
    assert second[-2] == {"role": "assistant", "content": "no idea"}
    assert "not valid JSON" in second[-1]["content"]
    assert "'7 pens' does not occur in the text" in backend.calls[2][1][-1]["content"]

    backend = ScriptedBackend({rec.text: ["no idea"]})
    outcome = LLMAnnotator(backend, examples, max_reply_retries=1).annotate(rec)
    assert outcome.status == "failed" and outcome.failure_kind == "reply" and len(backend.calls) == 2
    assert outcome.reason.startswith("no usable annotation in 2 replies: no annotation found")
    assert outcome.relations == ()


def test_a_reply_cut_off_by_the_length_limit_is_named_as_such(examples):
    rec = parse_record(_rec(2))
    cut = Completion('{"important": [{"4": ["2 pens"]}, {"How', Usage(100, 50, 1), truncated=True)
    backend = ScriptedBackend({rec.text: [cut, _good(2)]})
    outcome = LLMAnnotator(backend, examples).annotate(rec)
    assert outcome.status == "annotated" and outcome.relations[0].causes == ("2 pens", "buys 2 more")
    assert "cut off at the length limit" in backend.calls[1][1][-1]["content"]


def test_partly_valid_reply_keeps_valid_spans_and_counts_the_rest(examples):
    rec = parse_record(_rec(4))
    reply = json.dumps({"important": [{"6": ["4 pens", "9 pens", "How many pens"]}, {"cats": ["Sam"]}]})
    outcome = LLMAnnotator(ScriptedBackend({rec.text: [reply]}), examples).annotate(rec)
    assert outcome.status == "annotated"
    assert [(r.effect, r.causes) for r in outcome.relations] == [("6", ("4 pens", "How many pens"))]
    assert sorted(d.reason for d in outcome.dropped) == ["effect_dropped", "not_in_text", "not_in_text"]


def test_run_dedupes_caches_and_resumes(tmp_path, examples):
    records = [parse_record(_rec(i), line=i + 1) for i in range(6)] + [parse_record(_rec(0), line=7)]
    script = {r.text: [_good(r.extra["id"])] for r in records}
    script[records[3].text] = ["garbage"]  # a reply failure: cached
    script[records[4].text] = [TransportError("HTTP 503 (gave up after 6 attempts)", Usage(requests=6))]  # not cached
    backend = ScriptedBackend(script)
    cache = AnnotationCache(tmp_path / "c.jsonl")
    run = annotate_records(records, LLMAnnotator(backend, examples, max_reply_retries=1), cache=cache, concurrency=3, progress=False)
    s = run.summary
    assert (s.items, s.annotated, s.failed, s.unique_prompts) == (7, 5, 2, 6)
    assert dict(s.failed_by_kind) == {"reply": 1, "transport": 1}
    assert s.usage.requests == 4 + 2 + 6  # four good items, two replies for the garbage one, six transport tries
    assert run.outcomes[6].relations == run.outcomes[0].relations  # identical item annotated once
    assert sum(1 for t, _ in backend.calls if t == records[0].text) == 1
    assert len(cache) == 5  # transport failure not cached

    backend.calls.clear()
    again = annotate_records(records, LLMAnnotator(backend, examples, max_reply_retries=1),
                             cache=AnnotationCache(tmp_path / "c.jsonl"), progress=False)
    assert [t for t, _ in backend.calls] == [records[4].text]  # only the transport failure is asked again
    assert again.summary.from_cache == 5 and again.summary.cached_usage.requests == 4 + 2
    assert [o.to_json() for o in again.outcomes[:4]] == [o.to_json() for o in run.outcomes[:4]]

    backend.calls.clear()
    script[records[3].text] = [_good(3)]
    retried = annotate_records(records, LLMAnnotator(backend, examples), cache=AnnotationCache(tmp_path / "c.jsonl"),
                               retry_failed=True, progress=False)
    assert sorted(t for t, _ in backend.calls) == sorted([records[3].text, records[4].text])
    assert retried.outcomes[3].status == "annotated"


def test_fatal_error_stops_the_run_and_keeps_finished_items(tmp_path, examples):
    records = [parse_record(_rec(i)) for i in range(3)]
    script = {r.text: [_good(r.extra["id"])] for r in records}
    script[records[2].text] = [AnnotateError("the endpoint refused the credentials (HTTP 401)")]
    backend = ScriptedBackend(script)
    backend.max_concurrency = 1  # items in order: two finish, the third stops the run
    cache = AnnotationCache(tmp_path / "c.jsonl")
    with pytest.raises(AnnotateError, match="401"):
        annotate_records(records, LLMAnnotator(backend, examples), cache=cache, progress=False)
    assert len(AnnotationCache(tmp_path / "c.jsonl")) == 2


def test_annotate_file_preserves_fields_and_reports_failures(tmp_path, examples):
    src = tmp_path / "in.jsonl"
    rows = [_rec(i, meta={"k": [i]}) for i in range(3)]
    rows[1]["important"] = [{"old": ["x"]}]  # an existing annotation is replaced
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = load_records(src)
    script = {r.text: [_good(r.extra["id"])] for r in records}
    script[records[2].text] = ['{"important": [{"dogs": ["cats"]}]}']
    annotator = LLMAnnotator(ScriptedBackend(script), examples, max_reply_retries=0)
    out = tmp_path / "out.jsonl"
    run = annotate_file(src, out, annotator, progress=False)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w["id"] for w in written] == [0, 1]
    assert written[0] == {"input": rows[0]["input"], "target": 2, "important": [{"2": ["0 pens", "buys 2 more"]}],
                          "id": 0, "meta": {"k": [0]}}
    assert written[1]["important"] == [{"3": ["1 pens", "buys 2 more"]}]
    report = json.loads((tmp_path / "out.annotate-report.json").read_text())
    assert report["summary"]["failed"] == 1 and report["summary"]["replaced_annotations"] == 1
    assert report["failures"] == [{"index": 2, "line": 3, "kind": "reply", "reply": '{"important": [{"dogs": ["cats"]}]}',
                                   "reason": run.outcomes[2].reason}]
    assert "'dogs' does not occur in the text" in report["failures"][0]["reason"]
    assert {d["span"] for d in report["dropped"]} == {"dogs", "cats"}
    assert (tmp_path / "out.annotate-cache.jsonl").exists()

    annotate_file(src, out, annotator, keep_failed=True, progress=False)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) == 3 and "important" not in written[2] and written[2]["meta"] == {"k": [2]}
    with pytest.raises(DataError, match="output file is the input file"):
        annotate_file(src, src, annotator, progress=False)
