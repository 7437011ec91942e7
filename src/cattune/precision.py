"""Whether bf16 autocast pays on this machine, and the training config that follows from it.

bf16 autocast is fast where the hardware computes bf16 natively (recent GPUs; CPUs with AVX-512
or AMX, through oneDNN) and very slow where PyTorch falls back to scalar code: on an AVX2-only
CPU a bf16 matmul ran about 60 times slower than the same fp32 one and a SmolLM2 training step
took over 3 minutes instead of 11 seconds (docs/PERFORMANCE.md). A config asks for bf16; a run
uses it only where it pays, and its saved config says what it ran with.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import torch

from cattune.train_config import TrainConfig

logger = logging.getLogger(__name__)


@functools.cache
def bf16_is_fast() -> bool:
    """True where bf16 runs on native kernels: a CUDA device that supports it, or a CPU that
    oneDNN runs bf16 on (AVX-512 or AMX). An unknown torch build is trusted with the request."""
    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return True if probe is None else bool(probe())


@functools.cache
def _warn_slow_bf16() -> None:
    where = ("this GPU does not support bf16" if torch.cuda.is_available() else
             "this CPU has no native bf16 kernels (no AVX-512 or AMX), where bf16 autocast runs tens of times slower")
    logger.warning("bf16 was requested, but %s; training in fp32 (bf16=false) instead", where)


def usable_precision(config: TrainConfig) -> TrainConfig:
    """``config`` with ``bf16`` off where bf16 would be emulated (warned once per process)."""
    if config.bf16 and not bf16_is_fast():
        _warn_slow_bf16()
        return dataclasses.replace(config, bf16=False)
    return config
