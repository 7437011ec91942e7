"""CAT training under DDP: 2 CPU processes (gloo, launched with torchrun) match one process at the
same global batch. (On GPUs the same Trainer path is used by ``accelerate launch``; on CPU,
accelerate's own launcher wants MPI for several processes, while torchrun needs nothing more.)"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cattune.data import write_records
from cattune.data.stg import generate_splits
from tiny_models import save_tiny

SETTINGS = dict(max_length=96, lr=5e-3, logging_steps=1, save_steps=1000, tensorboard=False, lora=False, max_steps=4,
                attn_alpha=50.0, attn_loss_type="hinge", attn_schedule="constant", warmup_ratio=0.0, num_threads=1)


def _train_cmd(launcher, model, data, out, batch_size):
    overrides = {**SETTINGS, "model": str(model), "train_file": str(data), "output_dir": str(out), "batch_size": batch_size}
    return [*launcher, "-m", "cattune.cli.main", "train", *[f"{k}={json.dumps(v)}" for k, v in overrides.items()]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if "lm_loss" in line]


def test_ddp_two_processes_match_single_process(tmp_path):
    model = save_tiny(tmp_path, "llama")
    data = write_records(tmp_path / "train.jsonl", generate_splits(1, 64, 0)["train"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    single = subprocess.run(_train_cmd([sys.executable], model, data, tmp_path / "single", 8),
                            env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run(
        _train_cmd([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", str(_free_port())], model, data, tmp_path / "ddp", 4),
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    a, b = _metrics(tmp_path / "single"), _metrics(tmp_path / "ddp")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]  # the data was sharded, not repeated
    for ra, rb in zip(a, b):
        # The LM loss is a per-process token mean, so shards whose targets have different token
        # counts weigh tokens slightly differently than one process does; hence the tolerance.
        for key in ("lm_loss", "attn_loss", "attn_ratio"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-3, abs=1e-5), (ra["step"], key)


def test_a_command_that_succeeds_destroys_the_process_group(tmp_path):
    """A launcher's process group left to interpreter exit can abort a finished run (gloo threads
    torn down mid-flight: SIGABRT); the CLI destroys it after a command succeeds."""
    import torch.distributed as dist

    from cattune.cli.main import main

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert main(["-q", "data", "stg", "--train-size", "4", "--test-size", "4", "--out", str(tmp_path / "stg")]) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
