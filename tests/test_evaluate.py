import json
import random
from types import SimpleNamespace

import pytest
import torch

import cattune.evaluate as evaluate_module
from cattune.checkers import get_checker
from cattune.data.records import Record, load_records, write_records
from cattune.evaluate import (
    MIN_SHARED_PREFIX,
    _shared_prefix_length,
    evaluate_files,
    evaluate_records,
    generate,
    majority_baseline,
    output_names,
)
from cattune.stats import wilson_interval
from tiny_models import TINY_MODELS, save_tiny, tiny_llama, tiny_tokenizer

STG_PREFIX = "Please predict the probability of cancer. "
STG_NAMES = ["Smoking", "Weight", "Exercise", "Yellow fingers", "Clothing size", "Hormones", "Certain gene", "Room size"]


def stg_prompts(n: int, seed: int = 0) -> list[str]:
    """STG-style prompts of different lengths (different numbers of fields), so batches need padding."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        names = rng.sample(STG_NAMES, rng.randint(1, len(STG_NAMES)))
        pairs = ", ".join(f"{name}: {rng.randint(1, 10)}" for name in names)
        prompts.append(f"Here is the statistical data for a person. {pairs} Answer: ")
    return prompts


@pytest.mark.parametrize("kind", sorted(TINY_MODELS))
def test_batched_generation_equals_one_at_a_time(kind):
    # initializer_range 0.2 makes the random model's continuations varied, so a padding bug shows.
    model = TINY_MODELS[kind](initializer_range=0.2)
    tok = tiny_tokenizer()
    prompts = stg_prompts(12)
    assert len({len(tok(p)["input_ids"]) for p in prompts}) > 3
    batched = generate(model, tok, prompts, max_new_tokens=6, batch_size=5, progress=False)
    single = generate(model, tok, prompts, max_new_tokens=6, batch_size=1, progress=False)
    assert batched == single
    assert len(set(batched)) > 6


@pytest.mark.parametrize("kind", sorted(TINY_MODELS))
def test_rows_finishing_early_leave_the_batch_without_changing_the_others(kind):
    model = TINY_MODELS[kind](initializer_range=0.2, seed=1)
    tok = tiny_tokenizer()
    prompts = stg_prompts(10, seed=4)
    free = generate(model, tok, prompts, max_new_tokens=6, batch_size=1, progress=False)
    # A stop string found early in some continuations and absent from others, so rows end at
    # different steps and the batch shrinks while the rest go on.
    stop = next(ch for text in free for ch in text[:3] if ch.strip() and 0 < sum(ch in t for t in free) < len(free))
    batched = generate(model, tok, prompts, max_new_tokens=6, batch_size=10, stop_strings=(stop,), progress=False)
    single = generate(model, tok, prompts, max_new_tokens=6, batch_size=1, stop_strings=(stop,), progress=False)
    assert batched == single
    assert any(stop in t for t in batched) and any(stop not in t for t in batched)


@pytest.mark.parametrize("kind", sorted(TINY_MODELS))
def test_shared_prefix_cache_gives_the_same_continuations(kind):
    model = TINY_MODELS[kind](initializer_range=0.2)
    tok = tiny_tokenizer()
    prompts = [f"{STG_PREFIX}{p}" for p in stg_prompts(9, seed=6)]
    assert _shared_prefix_length([tok(p)["input_ids"] for p in prompts]) >= MIN_SHARED_PREFIX
    shared = generate(model, tok, prompts, max_new_tokens=5, batch_size=4, progress=False)
    assert shared == generate(model, tok, prompts, max_new_tokens=5, batch_size=4, share_prefix=False, progress=False)
    assert shared == generate(model, tok, prompts, max_new_tokens=5, batch_size=1, progress=False)


def test_shared_prefix_length_leaves_every_prompt_a_token():
    assert _shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5]]) == 3
    assert _shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2
    assert _shared_prefix_length([[7], [7]]) == 0
    assert _shared_prefix_length([[1, 2], [3, 2]]) == 0


def test_generation_equals_transformers_greedy_generate():
    model = tiny_llama(initializer_range=0.2)
    tok = tiny_tokenizer()
    prompts = [f"{STG_PREFIX}{p}" for p in stg_prompts(3, seed=1)]  # with a shared prefix cache
    ours = generate(model, tok, prompts, max_new_tokens=5, batch_size=3, progress=False)
    for prompt, text in zip(prompts, ours):
        ids = torch.tensor([tok(prompt)["input_ids"]])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == text


class ScriptedCache:
    """The stand-in model's cache: which script each live row follows, and how far it is."""

    def __init__(self, keys: list[int]):
        self.keys = keys
        self.step = 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.keys = [self.keys[i] for i in indices.tolist()]


class ScriptedLM(torch.nn.Module):
    """A stand-in causal LM whose greedy continuation is scripted per prompt (keyed by the prompt's
    token count): it checks how generate() handles eos, stop strings and finished rows."""

    def __init__(self, scripts: dict[int, list[int]], vocab_size: int):
        super().__init__()
        self.scripts = scripts
        self.vocab_size = vocab_size
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(eos_token_id=None)
        self.calls: list[int] = []  # rows computed per call

    def forward(self, input_ids, attention_mask, position_ids, past_key_values=None, use_cache=True, logits_to_keep=1):
        self.calls.append(input_ids.shape[0])
        if past_key_values is None:
            past_key_values = ScriptedCache(attention_mask.sum(-1).tolist())
        else:
            past_key_values.step += 1
        assert len(past_key_values.keys) == input_ids.shape[0] == attention_mask.shape[0] == position_ids.shape[0]
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab_size)
        for row, key in enumerate(past_key_values.keys):
            script = self.scripts[key]
            step = past_key_values.step
            logits[row, 0, script[step] if step < len(script) else 0] = 1.0
        return SimpleNamespace(logits=logits, past_key_values=past_key_values)


def _scripted(tok, prompt_texts, continuations):
    scripts = {}
    for prompt, text in zip(prompt_texts, continuations):
        key = len(tok(prompt)["input_ids"])
        assert key not in scripts, "scripted prompts need distinct token counts"
        ids = tok(text, add_special_tokens=False)["input_ids"] if isinstance(text, str) else text
        scripts[key] = ids
    return ScriptedLM(scripts, len(tok))


def test_rows_stop_at_eos_and_stop_strings_independently():
    tok = tiny_tokenizer()
    eos = tok.eos_token_id
    prompts = ["Smoking: 1 Answer: ", "Smoking: 1, Weight: 2 Answer: ", "Smoking: 1, Weight: 2, Exercise: 3 Answer: "]
    high = tok(" High Risk", add_special_tokens=False)["input_ids"]
    newline_then_more = tok(" Low Risk\nHere is the data", add_special_tokens=False)["input_ids"]
    long = tok(" apples apples apples apples apples apples apples", add_special_tokens=False)["input_ids"]
    model = _scripted(tok, prompts, [high + [eos] + high, newline_then_more, long])
    out = generate(model, tok, prompts, max_new_tokens=6, batch_size=3, stop_strings=("\n",), progress=False)
    assert out[0] == " High Risk"  # eos ends the row and is not part of the text
    assert out[1].startswith(" Low Risk\n") and "data" not in out[1]  # stopped right after the newline
    assert out[2] == tok.decode(long[:6])  # the max_new_tokens cap
    assert model.calls[:2] == [3, 3] and model.calls[-1] == 1  # finished rows leave the batch
    assert out == generate(model, tok, prompts, max_new_tokens=6, batch_size=1, stop_strings=("\n",), progress=False)
    assert get_checker("stg").extract(out[1]) == "Low Risk"


def test_stop_pattern_ends_a_worked_solution_after_its_answer_line():
    tok = tiny_tokenizer()
    prompts = ["How many apples? Answer: "]
    model = _scripted(tok, prompts, ["Ruth has 8 apples.\n#### 8\nRuth starts with 9 apples"])
    checker = get_checker("gsm8k")
    out = generate(model, tok, prompts, max_new_tokens=40, stop_pattern=checker.stop_pattern, progress=False)
    assert out[0].startswith("Ruth has 8 apples.\n#### 8\n") and "starts" not in out[0]
    assert checker.is_correct(out[0], "8")


def test_generation_stops_when_every_row_is_done():
    tok = tiny_tokenizer()
    prompts = ["Smoking: 1 Answer: ", "Smoking: 1, Weight: 2 Answer: "]
    model = _scripted(tok, prompts, [[tok.eos_token_id], tok(" Low", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]])
    generate(model, tok, prompts, max_new_tokens=50, batch_size=2, progress=False)
    n_low = len(tok(" Low", add_special_tokens=False)["input_ids"])
    # The first row ends at once and is dropped: later calls compute only the second row.
    assert model.calls == [2] + [1] * n_low


def test_generate_restores_training_mode_and_rejects_bad_arguments():
    model = tiny_llama().train()
    tok = tiny_tokenizer()
    generate(model, tok, ["Smoking: 1 Answer: "], max_new_tokens=1, progress=False)
    assert model.training
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, tok, ["x"], max_new_tokens=0)
    with pytest.raises(ValueError, match="batch_size"):
        generate(model, tok, ["x"], max_new_tokens=1, batch_size=0)
    assert generate(model, tok, [], max_new_tokens=1) == []


def _stg_records(targets, path="hand.jsonl"):
    prompts = stg_prompts(len(targets), seed=5)
    return [Record(input=p, target=t, raw_target=t, source=path, line=i + 1) for i, (p, t) in enumerate(zip(prompts, targets))]


def test_evaluate_records_with_known_predictions(monkeypatch, tmp_path):
    targets = ["Low Risk", "High Risk", "Low Risk", "Low Risk", "High Risk"]
    records = _stg_records(targets)
    generations = {records[0].input: " Low Risk", records[1].input: " High Risk\nHere",
                   records[2].input: " High Risk", records[3].input: "1.", records[4].input: "High Risk"}
    seen = {}

    def fake_generate(model, tokenizer, prompts, **kwargs):
        seen.update(kwargs)
        return [generations[p] for p in prompts]

    monkeypatch.setattr(evaluate_module, "generate", fake_generate)
    result = evaluate_records(None, None, records, batch_size=7, predictions_path=tmp_path / "p.jsonl")
    assert result.task == "stg"  # inferred from the targets
    assert seen["max_new_tokens"] == get_checker("stg").max_new_tokens and seen["batch_size"] == 7
    assert result.per_item == [True, True, False, False, True]
    assert (result.n, result.correct, result.accuracy) == (5, 3, 0.6)
    assert (result.ci_low, result.ci_high) == wilson_interval(3, 5)
    assert (result.majority_label, result.majority_accuracy) == ("Low Risk", 0.6)
    assert result.no_answer == 0
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(5))
    assert [line["correct"] for line in lines] == result.per_item
    assert lines[1] == {"index": 1, "line": 2, "prompt": records[1].input, "target": "High Risk",
                        "generation": " High Risk\nHere", "answer": "High Risk", "correct": True}
    summary = result.to_json()
    assert summary["predictions"] == str(tmp_path / "p.jsonl")
    assert summary["per_item"] == result.per_item
    assert "mean_absolute_error" not in summary  # labels, not numbers


def test_numeric_answers_carry_their_absolute_error(monkeypatch):
    records = [Record(input=f"Air Quality Index question {i}", target=t, line=i + 1, source="h.jsonl")
               for i, t in enumerate(["62", "40", "55"])]
    replies = dict(zip((r.input for r in records), [" 60", " forty", " 55\n"]))
    monkeypatch.setattr(evaluate_module, "generate", lambda model, tok, prompts, **kw: [replies[p] for p in prompts])
    summary = evaluate_records(None, None, records).to_json()
    assert summary["task"] == "stg_h"
    assert summary["absolute_error"] == [2.0, None, 0.0]
    assert summary["mean_absolute_error"] == 1.0 and summary["numeric_answers"] == 2
    assert summary["median_answer_error"] == pytest.approx((7 + 15 + 0) / 3)  # always answering 55
    assert summary["per_item"] == [False, False, True]


def test_majority_baseline_and_output_names():
    assert majority_baseline(_stg_records(["High Risk", "Low Risk", "Low Risk"])) == ("Low Risk", 2 / 3)
    assert output_names(["a/test.jsonl", "b/test.jsonl", "c/ood.jsonl"]) == ["test-1", "test-2", "ood"]


def _file_with_known_accuracy(tmp_path, model, n_right=3, n_wrong=3):
    """A file whose first ``n_right`` targets are the model's own answers and the rest are not."""
    tok = tiny_tokenizer()
    checker = get_checker("stg")
    prompts = stg_prompts(n_right + n_wrong, seed=2)
    answers = [checker.extract(g) for g in generate(model, tok, prompts, max_new_tokens=checker.max_new_tokens,
                                                    batch_size=1, stop_strings=checker.stop_strings, progress=False)]
    assert all(answers[:n_right]), "the tiny model must give a non-empty first line"
    targets = answers[:n_right] + ["no such answer"] * n_wrong
    path = tmp_path / "hand.jsonl"
    write_records(path, [{"input": p, "target": t} for p, t in zip(prompts, targets)])
    return path


def test_evaluate_files_end_to_end_on_a_saved_tiny_model(tmp_path):
    model_dir = save_tiny(tmp_path, "llama", initializer_range=0.2)
    data = _file_with_known_accuracy(tmp_path, tiny_llama(initializer_range=0.2))
    results = evaluate_files(str(model_dir), [data], task="stg", batch_size=4, out_dir=tmp_path / "out",
                             progress=False)
    result = results[str(data)]
    assert (result.n, result.correct, result.accuracy) == (6, 3, 0.5)
    lines = [json.loads(x) for x in (tmp_path / "out" / "hand.predictions.jsonl").read_text().splitlines()]
    assert sum(line["correct"] for line in lines) / len(lines) == result.accuracy
    summary = result.to_json()
    for key in ("accuracy", "n", "ci_low", "ci_high", "majority_accuracy", "majority_label", "task", "predictions"):
        assert key in summary
    assert summary["predictions"] == str(tmp_path / "out" / "hand.predictions.jsonl")


def test_evaluate_files_fails_on_bad_data_before_loading_the_model(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "x"}\n')
    with pytest.raises(Exception, match=r"bad.jsonl:1: missing field"):
        evaluate_files(str(tmp_path / "no-such-model"), [bad])


def test_full_fine_tune_and_lora_run_folders(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base_dir = save_tiny(tmp_path, "llama", initializer_range=0.2)
    data = tmp_path / "d.jsonl"
    write_records(data, [{"input": p, "target": "Low Risk"} for p in stg_prompts(5, seed=3)])
    tok = tiny_tokenizer()
    checker = get_checker("stg")

    def reference(model):
        return generate(model, tok, [r.input for r in load_records(data)], max_new_tokens=checker.max_new_tokens,
                        stop_strings=checker.stop_strings, batch_size=1, progress=False)

    # A full fine-tune run keeps its model in RUN/model.
    full_run = tmp_path / "full-run"
    AutoModelForCausalLM.from_pretrained(base_dir).save_pretrained(full_run / "model")
    tok.save_pretrained(full_run / "model")
    full = evaluate_files(str(full_run), [data], task="stg", progress=False)[str(data)]
    assert full.generations == reference(AutoModelForCausalLM.from_pretrained(base_dir))

    # A LoRA run: an adapter (non-zero, so it changes the model) on the base saved to disk.
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora_run = tmp_path / "lora-run"
    lora.save_pretrained(lora_run / "model")
    result = evaluate_files(str(lora_run), [data], task="stg", progress=False)[str(data)]
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), lora_run / "model")
    assert result.generations == reference(unmerged)
    assert result.generations != full.generations


@pytest.mark.slow
@pytest.mark.shared_data
def test_smollm2_batched_equals_one_at_a_time_on_stg(release_dir):
    from cattune.models import load_model, load_tokenizer

    records = load_records(release_dir / "STG" / "spurious_token_game_ood3_2.jsonl")[:8]
    model, tok = load_model("smollm2-135m"), load_tokenizer("smollm2-135m")
    checker = get_checker("stg")
    kwargs = dict(max_new_tokens=checker.max_new_tokens, stop_strings=checker.stop_strings, progress=False)
    prompts = [r.input for r in records]
    assert generate(model, tok, prompts, batch_size=8, **kwargs) == generate(model, tok, prompts, batch_size=1, **kwargs)
