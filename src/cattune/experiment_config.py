"""The experiment config: training settings shared by every arm, the arms, the data and seeds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from cattune.config import ConfigError
from cattune.train_config import TrainConfig


def _default_arms() -> dict[str, dict[str, Any]]:
    # The baseline is the same training with the attention term off.
    return {"baseline": {"attn_weight": 0.0}, "cat": {}}


@dataclass
class GenerateConfig:
    """Generate the benchmark instead of reading files (``cattune data stg`` / ``stg-h``)."""

    benchmark: Literal["stg", "stg-h"] = "stg"
    train_size: int = 800
    test_size: int = 400
    seed: int = 0
    middle_risk: bool = False
    splits: list[str] | None = None  # generated test splits to use (null: all of them)


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    output_dir: str = ""  # default runs/<name>
    # Data: either files (train_file + test_files) or a generated benchmark.
    train_file: str = ""
    test_files: dict[str, str] = field(default_factory=dict)  # split name -> JSONL path
    generate: GenerateConfig | None = None
    task: str | None = None  # answer checker; inferred from the test files when null
    flip: Literal["stg", "stg-h"] | None = None  # spurious flip-rate perturbation for the OOD-style splits
    flip_splits: list[str] = field(default_factory=lambda: ["test_ood"])
    # Also measure the flip rate under a redraw that keeps each value's printed length, so every
    # token keeps its position: flips there come from the values, not from shifted positions.
    flip_same_length: bool = False
    seeds: list[int] = field(default_factory=lambda: [42])
    arms: dict[str, dict[str, Any]] = field(default_factory=_default_arms)
    # The arm every other arm is compared with (paired tests, the report's differences); name
    # another arm to compare variants with it, e.g. plain fine-tuning at another learning rate.
    reference: str = "baseline"
    train: TrainConfig = field(default_factory=TrainConfig)
    # Train up to this many arms at once, each in its own process (on a CPU, set train.num_threads
    # so that parallel_arms x num_threads is the number of cores).
    parallel_arms: int = 1
    eval_batch_size: int = 32
    eval_limit: int | None = None  # evaluate only the first N items of each split
    diagnostics: bool = True  # attention shares of the base model and each trained arm
    diagnostics_limit: int = 64
    heatmap_split: str = "test_ood"

    def validate(self) -> None:
        if not self.generate and not (self.train_file and self.test_files):
            raise ConfigError("give train_file and test_files, or a generate section")
        if not self.seeds:
            raise ConfigError("seeds must list at least one seed")
        if not self.arms:
            raise ConfigError("arms must name at least one arm")
        for arm in self.arms:
            if not arm.replace("_", "").replace("-", "").isalnum():
                raise ConfigError(f"arm name '{arm}' must be letters, digits, '-' or '_' (it names a folder)")
        if self.reference != "baseline" and self.reference not in self.arms:
            raise ConfigError(f"reference '{self.reference}' is not an arm of this config; "
                              f"name one of {', '.join(self.arms)}")
