"""The Triton kernels compile to a real GPU binary (sm_90 cubin), checked without a GPU.

The interpreter accepts code that a GPU compile rejects (tl.dot tiles under 16, blocks that are not
powers of two, mismatched types across branches), so the kernels are also lowered ahead of time
with the ptxas that ships with Triton, in a subprocess without TRITON_INTERPRET.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

SCRIPT = Path(__file__).with_name("aot_compile.py")


def _ptxas() -> Path | None:
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return path if path.exists() else None


@pytest.mark.skipif(_ptxas() is None, reason="Triton's NVIDIA backend (ptxas) is not installed")
def test_kernels_compile_for_sm90() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--arch", "90", "--quick"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "_shrink_kernel" in proc.stdout and "_expand_kernel" in proc.stdout
    assert "compiled" in proc.stdout.splitlines()[-1]
