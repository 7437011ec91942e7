"""The in-process Hugging Face backend: plumbing with a tiny random model, and a smoke test with
the embedded SmolLM2 showing that validation reports what a weak annotator gets wrong."""

import json

import pytest

from cattune.annotate import LLMAnnotator, load_example_set, validate_relations
from cattune.annotate.local import LocalChatBackend
from cattune.cli.main import main
from cattune.data.records import load_records, parse_record
from tiny_models import tiny_llama, tiny_tokenizer

EXAMPLES = """\
task: answering arithmetic word problems
examples:
  - input: "Zoe has 4 pears and buys 5 more. How many pears? Answer: "
    target: "9"
    important:
      - {"9": ["4 pears", "5 more", "How many pears"]}
"""


def test_local_backend_generates_greedily_and_garbage_is_reported(tmp_path):
    (tmp_path / "ex.yaml").write_text(EXAMPLES)
    tok = tiny_tokenizer()  # no chat template: the plain transcript path
    backend = LocalChatBackend("tiny", max_new_tokens=12, model=tiny_llama(), tokenizer=tok)
    messages = [{"role": "user", "content": "Smoking: 3 Answer: "}]
    first, second = backend.complete(messages), backend.complete(messages)
    assert first == second  # greedy: the cache stays valid across runs
    assert first.usage.requests == 1 and 0 < first.usage.completion_tokens <= 12 and first.usage.prompt_tokens > 5
    assert backend.identity() == {"kind": "local", "model": "tiny", "max_new_tokens": 12, "decoding": "greedy"}

    record = parse_record({"input": "Ann has 3 apples and buys 2 more. How many apples? Answer: ", "target": "5"})
    outcome = LLMAnnotator(backend, load_example_set(tmp_path / "ex.yaml"), max_reply_retries=1).annotate(record)
    assert outcome.status == "failed" and outcome.failure_kind == "reply" and outcome.usage.requests == 2
    assert outcome.reason.startswith("no usable annotation in 2 replies")


@pytest.mark.slow
def test_smollm2_as_annotator_is_validated(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "ex.yaml").write_text(EXAMPLES)
    items = [
        {"id": 1, "input": "Tom has 6 marbles and finds 3 more. How many marbles? Answer: ", "target": "9"},
        {"id": 2, "input": "Mia had 10 cards and gave away 4. How many cards are left? Answer: ", "target": "6"},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(i) + "\n" for i in items))
    out = tmp_path / "out.jsonl"
    code = main(["annotate", "--backend", "local", "--model", "smollm2-135m", "--examples", str(tmp_path / "ex.yaml"),
                 "--in", str(src), "--out", str(out), "--max-new-tokens", "48", "--max-reply-retries", "0", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "out.annotate-report.json").read_text())
    summary = report["summary"]
    assert summary["items"] == 2 and summary["annotated"] + summary["failed"] == 2
    assert summary["usage"]["requests"] == 2 and summary["usage"]["completion_tokens"] > 0
    # What was kept is placeable; what was not is in the report, item by item.
    for record in (load_records(out) if out.read_text() else []):
        assert not validate_relations(record.text, [(r.effect, r.causes) for r in record.important]).dropped
    assert all(f["reason"] for f in report["failures"])
    assert report["failures"] or report["dropped"], "SmolLM2-135M annotated both items perfectly: update this smoke test"
    print(printed)  # shown with -s: the summary of a weak annotator
