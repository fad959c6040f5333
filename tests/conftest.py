"""Test-wide setup.

HF_HUB_OFFLINE is set before huggingface_hub is first imported (it reads it once).

TRITON_INTERPRET must be set before any Triton kernel module is imported, so it happens here, at the
very top, before anything from loraplex is imported. On a machine with CUDA the compiled kernels run.
"""

import os
import sys
from pathlib import Path

# The repository root, so the benchmark pieces (`benchmarks.*`) import as they do under `python -m`.
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Tests never reach the Hugging Face hub: hub ids resolve through the local cache or fail fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
