"""CAT training on tiny models: logging, the term's effect, bad input, resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cattune.config import ConfigError, load_config
from cattune.data import write_records
from cattune.data.stg import generate_splits
from cattune.train_config import TrainConfig, changed_settings
from cattune.training import COMPLETE_MARKER, last_complete_checkpoint, train
from tiny_models import save_tiny, tiny_tokenizer

TINY = dict(max_length=96, batch_size=8, lr=5e-3, logging_steps=1, save_steps=1000, tensorboard=False, lora=False,
            attn_alpha=50.0, attn_loss_type="hinge", attn_schedule="constant", warmup_ratio=0.0, num_threads=1)


@pytest.fixture(scope="module")
def stg_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stg")
    splits = generate_splits(0, 64, 8)
    return write_records(folder / "train.jsonl", splits["train"])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("model"), "llama")


def _cfg(tiny_dir, stg_file, out, **kw):
    data = {**TINY, "model": str(tiny_dir), "train_file": str(stg_file), "output_dir": str(out), **kw}
    return load_config(TrainConfig, None, [f"{k}={json.dumps(v)}" for k, v in data.items()])


def _metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_run_folder_and_metrics(tiny_dir, stg_file, tmp_path):
    result = train(_cfg(tiny_dir, stg_file, tmp_path / "run", max_steps=3))
    assert result.global_step == 3
    rows = [r for r in _metrics(tmp_path / "run") if "lm_loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        for key in ("step", "epoch", "lm_loss", "attn_loss", "attn_ratio", "attn_satisfied", "attn_share_cause"):
            assert key in r and r[key] == r[key]  # present and not NaN
    assert (tmp_path / "run" / "config.yaml").exists()
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    tok = tiny_tokenizer()
    # The effect is the target: one row per target token (the row before each of them).
    expected = sum(len(tok(r["target"], add_special_tokens=False)["input_ids"])
                   for r in map(json.loads, Path(stg_file).read_text().splitlines()))
    assert summary["supervised_rows"] == expected and summary["records_without_rows"] == 0


def test_attention_term_raises_ratio_only_when_on(tiny_dir, stg_file, tmp_path):
    on = train(_cfg(tiny_dir, stg_file, tmp_path / "on", max_steps=16, attn_weight=1.0))
    off = train(_cfg(tiny_dir, stg_file, tmp_path / "off", max_steps=16, attn_weight=0.0))
    r_on = [r["attn_ratio"] for r in _metrics(on.output_dir) if "attn_ratio" in r]
    r_off = [r["attn_ratio"] for r in _metrics(off.output_dir) if "attn_ratio" in r]
    assert r_on[0] == pytest.approx(r_off[0], rel=1e-4)  # same start: same model, same first batch
    assert sum(r_on[-3:]) / 3 > 2 * sum(r_on[:3]) / 3
    assert sum(r_off[-3:]) / 3 < 1.5 * sum(r_off[:3]) / 3
    assert all(r["attn_weight"] == 0 for r in _metrics(off.output_dir) if "attn_weight" in r)


def test_lora_run_saves_adapter(tiny_dir, stg_file, tmp_path):
    result = train(_cfg(tiny_dir, stg_file, tmp_path / "lora", max_steps=2, lora=True, lora_r=4))
    assert (result.model_dir / "adapter_config.json").exists()


def test_the_seed_fixes_the_lora_initialisation(tiny_dir, stg_file, tmp_path):
    # The adapter's A matrices are drawn when PEFT wraps the model, before the Trainer seeds
    # anything: unless the seed is set first, two runs with one seed start from different adapters.
    def adapter(name, seed):
        torch.manual_seed(1000 + len(name))  # whatever state the caller left behind
        result = train(_cfg(tiny_dir, stg_file, tmp_path / name, max_steps=1, lora=True, lora_r=4, seed=seed))
        return load_file(str(result.model_dir / "adapter_model.safetensors"))

    first, again, other = adapter("a", 7), adapter("bb", 7), adapter("ccc", 8)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_records_without_rows_train_on_lm_loss(tiny_dir, tmp_path):
    path = write_records(tmp_path / "t.jsonl", [
        {"input": "Smoking: 8, Weight: 4 Answer: ", "target": "High Risk", "important": [{"High Risk": ["Smoking: 8"]}]},
        {"input": "Smoking: 2 Answer: ", "target": "Low Risk", "important": [{"Missing": ["Nowhere"]}]},
        {"input": "Smoking: 3 Answer: ", "target": "Low Risk", "important": []},
    ])
    result = train(_cfg(tiny_dir, path, tmp_path / "run", max_steps=2, batch_size=1))
    assert result.summary["records_without_rows"] == 2
    assert result.summary["spans_missing"] == 2
    assert all(r["lm_loss"] == r["lm_loss"] for r in _metrics(tmp_path / "run") if "lm_loss" in r)


def test_unannotated_file_is_refused_for_cat_but_fine_for_baseline(tiny_dir, tmp_path):
    path = write_records(tmp_path / "t.jsonl", [{"input": "Smoking: 8 Answer: ", "target": "High Risk"}] * 4)
    with pytest.raises(Exception, match="no 'important' annotation"):
        train(_cfg(tiny_dir, path, tmp_path / "cat", max_steps=1))
    assert train(_cfg(tiny_dir, path, tmp_path / "base", max_steps=1, attn_weight=0.0)).global_step == 1


def test_existing_run_needs_resume(tiny_dir, stg_file, tmp_path):
    train(_cfg(tiny_dir, stg_file, tmp_path / "run", max_steps=1))
    with pytest.raises(ConfigError, match="already holds a finished run"):
        train(_cfg(tiny_dir, stg_file, tmp_path / "run", max_steps=1))


def test_resume_with_other_settings_is_refused(tiny_dir, stg_file, tmp_path):
    train(_cfg(tiny_dir, stg_file, tmp_path / "run", max_steps=1))
    with pytest.raises(ConfigError, match=r"attn_alpha: 50.0 -> 5.0.*delete"):
        train(_cfg(tiny_dir, stg_file, tmp_path / "run", max_steps=1, attn_alpha=5.0), resume=True)
    # Where the run lives and how it logs may change; the finished run is then reused as it is.
    moved = tmp_path / "moved"
    (tmp_path / "run").rename(moved)
    again = train(_cfg(tiny_dir, stg_file, moved, max_steps=1, num_threads=2, logging_steps=5), resume=True)
    assert again.global_step == 1


def test_changed_settings_names_each_change_and_fills_older_configs():
    config = TrainConfig(train_file="runs/a/data/train.jsonl", output_dir="runs/a/cat", epochs=6, position_jitter=8)
    saved = {"train_file": "runs/b/data/train.jsonl", "output_dir": "runs/b/cat", "epochs": 6, "num_threads": 1}
    # position_jitter did not exist when this config was saved: it takes its default, 0.
    assert changed_settings(saved, config) == ["position_jitter: 0 -> 8"]
    assert changed_settings({**saved, "position_jitter": 8, "seed": 43, "gone_key": 1}, config) == ["seed: 43 -> 42"]
    assert changed_settings({**saved, "position_jitter": 8, "train_file": "other.jsonl"}, config) == \
        ["train_file: 'other.jsonl' -> 'train.jsonl'"]


def test_incomplete_checkpoints_are_ignored(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / COMPLETE_MARKER).write_text("2")
    (tmp_path / "checkpoint-4").mkdir()  # killed while saving
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert not (tmp_path / "checkpoint-4").exists()


def _cli(*args, **popen):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "cattune.cli.main", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


@pytest.mark.parametrize("extra", [{}, {"position_jitter": 3}], ids=["plain", "position-jitter"])
def test_resume_after_sigkill_matches_uninterrupted_run(tiny_dir, stg_file, tmp_path, extra):
    # With position jitter the gaps come from the torch RNG, which checkpoints restore.
    common = [f"{k}={json.dumps(v)}" for k, v in {**TINY, "model": str(tiny_dir), "train_file": str(stg_file),
                                                   "max_steps": 12, "save_steps": 3, "save_total_limit": 10,
                                                   **extra}.items()]
    ref = _cli(*common, f"output_dir={tmp_path / 'ref'}")
    assert ref.wait(timeout=300) == 0, ref.stdout.read()

    run = tmp_path / "killed"
    proc = _cli(*common, f"output_dir={run}")
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "checkpoint-6" / COMPLETE_MARKER).exists():
        time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "model").exists()
    resumed = _cli(*common, f"output_dir={run}", "--resume")
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out

    a = load_file(tmp_path / "ref" / "model" / "model.safetensors")
    b = load_file(run / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    steps = [r["step"] for r in _metrics(run) if "lm_loss" in r]
    assert steps == list(range(1, 13))  # every step logged once, none lost or repeated


def test_bf16_is_dropped_where_it_would_be_emulated(tiny_dir, stg_file, tmp_path, monkeypatch, caplog):
    from cattune import precision

    monkeypatch.setattr(precision, "bf16_is_fast", lambda: False)
    precision._warn_slow_bf16.cache_clear()
    result = train(_cfg(tiny_dir, stg_file, tmp_path / "run", max_steps=1, bf16=True))
    assert "training in fp32" in caplog.text
    # The saved config says what ran, so resuming or reusing the run under the same request passes
    # the settings check, and a faster machine reusing it would be told that it ran in fp32.
    saved = load_config(TrainConfig, tmp_path / "run" / "config.yaml")
    assert saved.bf16 is False and result.global_step == 1
    again = train(_cfg(tiny_dir, stg_file, tmp_path / "run", max_steps=1, bf16=True), resume=True)
    assert again.global_step == 1


def test_bf16_is_kept_where_it_is_native(monkeypatch):
    from cattune import precision

    config = TrainConfig(bf16=True)
    monkeypatch.setattr(precision, "bf16_is_fast", lambda: True)
    assert precision.usable_precision(config) is config
    monkeypatch.setattr(precision, "bf16_is_fast", lambda: False)
    assert precision.usable_precision(config).bf16 is False
    assert precision.usable_precision(TrainConfig(bf16=False)).bf16 is False
