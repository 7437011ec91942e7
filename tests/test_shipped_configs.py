"""Every YAML under configs/ loads and validates, and so does every arm of an experiment config (a
typo in an arm's key would otherwise surface only when that arm starts training, maybe hours in)."""

from pathlib import Path

import pytest

from cattune.config import load_config
from cattune.experiment import ExperimentRunner, _train_config
from cattune.experiment_config import ExperimentConfig
from cattune.train_config import TrainConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_and_its_arms_validate(path, tmp_path):
    if path.name.startswith("train_"):
        load_config(TrainConfig, path).validate()
        return
    config = load_config(ExperimentConfig, path)
    config.validate()
    for arm in config.arms:
        for seed in config.seeds:
            _train_config(config, arm, seed, tmp_path / "train.jsonl", tmp_path / arm).validate()


def test_experiment_runs_ask_for_what_training_will_run(tmp_path, monkeypatch):
    # An experiment checks a finished run's saved settings against its arm's config before reusing
    # it; on a CPU without native bf16 both must say fp32, or every run would be trained again.
    from cattune import precision

    monkeypatch.setattr(precision, "bf16_is_fast", lambda: False)
    config = load_config(ExperimentConfig, Path(__file__).resolve().parents[1] / "configs" / "experiment_stg_smollm2.yaml")
    assert config.train.bf16 is True
    assert _train_config(config, "cat", 42, tmp_path / "train.jsonl", tmp_path / "cat").bf16 is False
    # and the experiment's own saved config (results.json, config.yaml) says the same
    assert ExperimentRunner(config, results_dir=tmp_path).config.train.bf16 is False
    assert config.train.bf16 is True  # the caller's config is left as it was
