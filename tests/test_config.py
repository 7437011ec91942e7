import pytest
import yaml

from cattune.config import ConfigError, load_config, parse_overrides, save_config
from cattune.train_config import TrainConfig


def test_overrides_are_typed_and_nested():
    assert parse_overrides(["attn_weight=0", "lora=false", "name=x", "a.b=3", "layers=[-1, -2]"]) == {
        "attn_weight": 0, "lora": False, "name": "x", "a": {"b": 3}, "layers": [-1, -2],
    }


def test_yaml_plus_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train_file: a.jsonl\nepochs: 2\nattn_loss_type: hinge\n")
    cfg = load_config(TrainConfig, path, ["attn_weight=0", "max_steps=7", "output_dir=runs/x", "attn_layers=[-1]"])
    assert cfg.train_file == "a.jsonl" and cfg.epochs == 2.0 and cfg.attn_loss_type == "hinge"
    assert cfg.attn_weight == 0.0 and isinstance(cfg.attn_weight, float)
    assert cfg.max_steps == 7 and cfg.output_dir == "runs/x" and cfg.attn_layers == [-1]


def test_unknown_key_suggests_and_lists_valid_keys():
    with pytest.raises(ConfigError, match="did you mean 'attn_alpha'.*Valid keys"):
        load_config(TrainConfig, None, ["attn_alpah=3"])


def test_invalid_choice_lists_choices():
    with pytest.raises(ConfigError, match="'kl' is not valid; choose one of 'div', 'div2', 'nll', 'hinge'"):
        load_config(TrainConfig, None, ["attn_loss_type=kl"])


@pytest.mark.parametrize("override, message", [
    ("lora=yes please", "expected true or false"),
    ("batch_size=1.5", "expected an integer"),
    ("lr=fast", "expected a number"),
    ("attn_weight=-1", "attn_weight must be >= 0"),
])
def test_bad_values_are_rejected(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, None, [override])


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 2\nlr: [1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config(TrainConfig, path)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(TrainConfig, None, ["train_file=t.jsonl", "lora=false", "attn_per_head=true"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(TrainConfig, tmp_path / "config.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["lora"] is False


def test_exponent_numbers_without_a_dot_are_numbers(tmp_path):
    # YAML 1.1 reads "1e-9" as a string; a user writing lr=1e-4 means a number.
    assert load_config(TrainConfig, None, ["lr=1e-4", "path_weight=1e-09"]).lr == pytest.approx(1e-4)
    path = tmp_path / "c.yaml"
    path.write_text("lr: 5e-4\n")
    assert load_config(TrainConfig, path).lr == pytest.approx(5e-4)


def test_a_single_value_is_a_one_item_list():
    assert load_config(TrainConfig, None, ["attn_layers=-1"]).attn_layers == [-1]


def test_comma_separated_numbers_are_a_list_of_numbers():
    from cattune.experiment_config import ExperimentConfig

    cfg = load_config(ExperimentConfig, None, ["seeds=42,43,44", "train_file=t.jsonl", "test_files={a: b.jsonl}"])
    assert cfg.seeds == [42, 43, 44]
    assert load_config(TrainConfig, None, ["lora_target_modules=q_proj,v_proj"]).lora_target_modules == ["q_proj", "v_proj"]
