"""Test-wide setup.

TRITON_INTERPRET must be set before any Triton kernel module is imported, so it happens here, at the
very top, before anything from loraplex is imported. On a machine with CUDA the compiled kernels run.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
