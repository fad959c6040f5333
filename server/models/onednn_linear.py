"""Linear layers with weights kept in oneDNN's blocked layout (CPU, float32).

    y [T, out] = x [T, in] @ W^T [in, out] (+ b)

`F.linear` hands W [out, in] to the BLAS, which copies it into its blocked panel layout on every call.
For a step of a few dozen rows that means reading, writing and re-reading every weight matrix, and
the model's weights (hundreds of MB) never stay in cache from one step to the next. Reordering each
weight once, at load time, into oneDNN's layout leaves one read per call. Measured on a 2-core AMD
EPYC in float32: 32 rows through llama-58m's projections and LM head took about a third less time.

Only CPU float32 is reordered: cuBLAS needs no such help, and most CPUs have no fast oneDNN bf16.
`LORAPLEX_ONEDNN_LINEAR=0` turns it off. It is also off when this torch build lacks the ops or their
result differs from `F.linear` on a probe, so such a build serves with `F.linear`, not wrong numbers.
"""

from __future__ import annotations

import functools
import logging
import os

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

ENV_SWITCH = "LORAPLEX_ONEDNN_LINEAR"


def onednn_enabled(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a model on this device and dtype keeps its weights in oneDNN's layout."""
    if device.type != "cpu" or dtype != torch.float32:
        return False
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return _onednn_works()


@functools.cache
def _onednn_works() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(48, 40, generator=generator)
        bias = torch.randn(48, generator=generator)
        x = torch.randn(5, 40, generator=generator)
        got = onednn_linear(x, to_onednn(weight), bias)
        expected = F.linear(x, weight, bias)
    except (AttributeError, RuntimeError) as error:  # op missing or refused in this torch build
        logger.info("oneDNN linear unavailable (%s); using F.linear", error)
        return False
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-5, atol=1e-5):
        logger.warning("oneDNN linear disagrees with F.linear on a probe; using F.linear")
        return False
    return True


def to_onednn(weight: torch.Tensor) -> torch.Tensor:
    """W [out, in] float32 -> an opaque oneDNN tensor holding W in its blocked layout."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [T, in] -> x @ W^T + b [T, out], W from `to_onednn`."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def linear(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    weight_onednn: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """x @ W^T + b with whichever copy of W a layer keeps: the oneDNN one when set, else the plain one."""
    if weight_onednn is not None:
        return onednn_linear(x, weight_onednn, bias)
    return F.linear(x, weight, bias)
