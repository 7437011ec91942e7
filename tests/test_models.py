"""Model resolution and the embedded SmolLM2 default."""

import json

import pytest
import torch

from cattune.models import ModelLoadError, load_model, load_tokenizer, resolve_model


@pytest.mark.slow
def test_embedded_smollm2_loads_offline_and_continues_sensibly():
    tok = load_tokenizer("smollm2-135m")
    model = load_model("smollm2-135m").eval()
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


def test_missing_path_and_folder_without_model_are_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model(str(tmp_path / "nowhere" / "model"))
    with pytest.raises(ModelLoadError, match="holds no config.json or adapter_config.json"):
        resolve_model(str(tmp_path))


def test_run_folder_with_adapter_resolves_to_its_base(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    adapter = tmp_path / "run" / "model"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    source = resolve_model(str(tmp_path / "run"))
    assert source.base == str(base) and source.adapter == str(adapter)


def test_unknown_hub_id_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="offline"):
        load_tokenizer("no-such-org/no-such-model")
