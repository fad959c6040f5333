"""Bad arguments raise ValueError before anything is launched, on every backend."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from lora_cases import Spec, make_case

from loraplex.kernels import add_lora, add_lora_single, lora_expand, lora_shrink

SPEC = Spec(6, "uniform", torch.float32, in_features=8, widths=(4, 3), rank_choices=(2, 4), r_max=4)


def _args() -> dict:
    case = make_case(SPEC)
    return {
        "y": case.y,
        "x": case.x,
        "lora_a": torch.nan_to_num(case.lora_a),
        "lora_b": torch.nan_to_num(case.lora_b),
        "ranks": case.ranks,
        "scaling": case.scaling,
        "seg_starts": case.seg_starts,
        "seg_slots": case.seg_slots,
        "slice_offsets": SPEC.slice_offsets,
    }


def _set(name: str, make: Callable[[dict], object]) -> Callable[[dict], dict]:
    def mutate(args: dict) -> dict:
        args[name] = make(args)
        return args

    return mutate


def _value(name: str, index: int, value: int) -> Callable[[dict], dict]:
    def mutate(args: dict) -> dict:
        args[name] = args[name].clone()
        args[name].view(-1)[index] = value
        return args

    return mutate


BAD = {
    "x-1d": (_set("x", lambda a: a["x"][0]), "x must be 2-D"),
    "x-int": (_set("x", lambda a: a["x"].to(torch.int32)), "x must have dtype"),
    "x-float64": (_set("x", lambda a: a["x"].double()), "x must have dtype"),
    "a-dtype": (_set("lora_a", lambda a: a["lora_a"].half()), "lora_a dtype"),
    "a-3d": (_set("lora_a", lambda a: a["lora_a"][:, 0]), "lora_a must be 4-D"),
    "a-in": (_set("lora_a", lambda a: a["lora_a"][..., :5]), "in-features"),
    "b-dtype": (_set("lora_b", lambda a: a["lora_b"].half()), "lora_b dtype"),
    "b-out": (_set("lora_b", lambda a: a["lora_b"][:, :5]), "out-features"),
    "b-rmax": (_set("lora_b", lambda a: a["lora_b"][..., :3]), "disagree on slots or r_max"),
    "y-dtype": (_set("y", lambda a: a["y"].half()), "lora_b dtype"),
    "y-tokens": (_set("y", lambda a: a["y"][:4]), "y has 4 tokens but x has 6"),
    "ranks-int64": (_set("ranks", lambda a: a["ranks"].long()), "ranks must have dtype"),
    "ranks-shape": (_set("ranks", lambda a: a["ranks"][:, :2]), "ranks must have shape"),
    "scaling-f64": (_set("scaling", lambda a: a["scaling"].double()), "scaling must have dtype"),
    "scaling-shape": (_set("scaling", lambda a: a["scaling"][:1]), "scaling must have shape"),
    "starts-int64": (_set("seg_starts", lambda a: a["seg_starts"].long()), "seg_starts must have dtype"),
    "starts-length": (_set("seg_starts", lambda a: a["seg_starts"][:-1]), "one more entry"),
    "starts-not-0": (_value("seg_starts", 0, 1), "begin at 0"),
    "starts-not-T": (_value("seg_starts", -1, 5), "end at the token count"),
    "starts-decreasing": (_value("seg_starts", 1, 6), "non-decreasing"),
    "slot-too-big": (_value("seg_slots", 0, 99), r"seg_slots must lie in \[-1"),
    "slot-below-minus-1": (_value("seg_slots", 0, -2), r"seg_slots must lie in \[-1"),
    "rank-above-rmax": (_value("ranks", 0, 5), "ranks must lie in"),
    "rank-negative": (_value("ranks", 0, -1), "ranks must lie in"),
    "offsets-length": (_set("slice_offsets", lambda a: (0, 7)), "n_slices \\+ 1"),
    "offsets-end": (_set("slice_offsets", lambda a: (0, 4, 6)), "rise from 0 to out_total"),
    "offsets-tensor": (_set("slice_offsets", lambda a: torch.tensor([0, 4, 7])), "tuple of python ints"),
    "device": (_set("seg_slots", lambda a: a["seg_slots"].to("meta")), "one device"),
}


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("bad", list(BAD), ids=list(BAD))
def test_add_lora_rejects(bad: str, backend: str) -> None:
    mutate, message = BAD[bad]
    args = mutate(_args())
    y_before = args["y"].clone() if args["y"].dim() else None
    with pytest.raises(ValueError, match=message):
        add_lora(**args, backend=backend)
    if y_before is not None:
        assert torch.equal(args["y"], y_before)


def test_shrink_and_expand_reject() -> None:
    a = _args()
    with pytest.raises(ValueError, match="lora_a must be 4-D"):
        lora_shrink(a["x"], a["lora_b"], a["ranks"], a["seg_starts"], a["seg_slots"])
    h = lora_shrink(a["x"], a["lora_a"], a["ranks"], a["seg_starts"], a["seg_slots"])
    common = (a["lora_b"], a["ranks"], a["scaling"], a["seg_starts"], a["seg_slots"], a["slice_offsets"])
    with pytest.raises(ValueError, match="h must have dtype"):
        lora_expand(a["y"], h.half(), *common)
    with pytest.raises(ValueError, match="h must have shape"):
        lora_expand(a["y"], h[:, :, :3], *common)
    with pytest.raises(ValueError, match="h must be 3-D"):
        lora_expand(a["y"], h[0], *common)


def test_single_rejects_multi_slice_shapes() -> None:
    a = _args()
    with pytest.raises(ValueError, match="lora_a must be 3-D"):
        add_lora_single(
            a["y"],
            a["x"],
            a["lora_a"],
            a["lora_b"],
            a["ranks"][0],
            a["scaling"][0],
            a["seg_starts"],
            a["seg_slots"],
        )
    with pytest.raises(ValueError, match="ranks must be 1-D"):
        add_lora_single(
            a["y"],
            a["x"],
            a["lora_a"][:, 0],
            a["lora_b"],
            a["ranks"],
            a["scaling"][0],
            a["seg_starts"],
            a["seg_slots"],
        )
