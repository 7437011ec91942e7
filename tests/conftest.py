import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
RELEASE = SHARED / "data" / "cat-release"


@pytest.fixture
def release_dir() -> Path:
    if not RELEASE.is_dir():
        pytest.skip(f"released CAT data not found at {RELEASE} (clone the project beside ../shared)")
    return RELEASE
