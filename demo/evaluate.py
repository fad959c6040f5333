"""Greedy exact-match accuracy of the demo base model and adapters on the held-out inputs.

    python -m loraplex.demo.evaluate [--assets DIR] [--n 200] [--dtype float32] [--json PATH]

Runs through the shipped files exactly as a user would: ``AutoTokenizer`` frames the raw text,
``generate`` decodes greedily, and ``decode(skip_special_tokens=True)`` must give the expected text.
Adapters are loaded with peft. Prints the rates and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import peft
import torch
import transformers
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from loraplex.demo import ADAPTER_NAMES, ASSETS_DIR
from loraplex.demo.tasks import HELDOUT_SIZE, TRANSFORMS, heldout_inputs

DEFAULT_JSON = ASSETS_DIR / "evaluation.json"


def load_demo(
    assets: Path = ASSETS_DIR, dtype: torch.dtype = torch.float32
) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """The base model with all three adapters loaded, and its tokenizer, from ``assets``."""
    tokenizer = AutoTokenizer.from_pretrained(assets / "base")
    base = AutoModelForCausalLM.from_pretrained(assets / "base", dtype=dtype)
    first, *others = ADAPTER_NAMES
    model = PeftModel.from_pretrained(base, assets / "adapters" / first, adapter_name=first)
    for name in others:
        model.load_adapter(assets / "adapters" / name, adapter_name=name)
    model.eval()
    return model, tokenizer


@torch.no_grad()
def greedy_outputs(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    inputs: list[str],
    batch_size: int = 100,
) -> list[str]:
    """The greedy answer to each raw input text, decoded without special tokens.

    Every demo answer is as long as its input, so generation stops after a prompt's length.
    """
    outputs: list[str] = []
    for start in range(0, len(inputs), batch_size):
        batch = tokenizer(
            inputs[start : start + batch_size], return_tensors="pt", padding=True, padding_side="left"
        )
        generated = model.generate(
            **batch,
            do_sample=False,
            max_new_tokens=batch["input_ids"].shape[1],
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = generated[:, batch["input_ids"].shape[1] :]
        outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return outputs


def exact_match_rate(task: str, inputs: list[str], outputs: list[str]) -> float:
    """The share of ``outputs`` equal to ``TRANSFORMS[task]`` of their input."""
    return sum(out == TRANSFORMS[task](text) for text, out in zip(inputs, outputs, strict=True)) / len(inputs)


def evaluate(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, inputs: list[str]
) -> dict[str, tuple[float, list[tuple[str, str]]]]:
    """For the base model (``"base"``) and each adapter: the exact-match rate and the misses."""
    results: dict[str, tuple[float, list[tuple[str, str]]]] = {}
    for name in ("base", *ADAPTER_NAMES):
        task = "echo" if name == "base" else name
        if name == "base":
            with model.disable_adapter():
                outputs = greedy_outputs(model, tokenizer, inputs)
        else:
            model.set_adapter(name)
            outputs = greedy_outputs(model, tokenizer, inputs)
        misses = [
            (text, out) for text, out in zip(inputs, outputs, strict=True) if out != TRANSFORMS[task](text)
        ]
        results[name] = (exact_match_rate(task, inputs, outputs), misses)
    return results


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (``python -m loraplex.demo.evaluate``)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--assets", type=Path, default=ASSETS_DIR, help="holds base/ and adapters/")
    parser.add_argument("--n", type=int, default=HELDOUT_SIZE, help="how many held-out inputs")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the rates")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model, tokenizer = load_demo(args.assets, getattr(torch, args.dtype))
    inputs = heldout_inputs(args.n)
    lowercase = evaluate(model, tokenizer, inputs)
    capitalized = evaluate(model, tokenizer, [text.title() for text in inputs])
    report = {
        "heldout_inputs": len(inputs),
        "dtype": args.dtype,
        "exact_match": {name: rate for name, (rate, _) in lowercase.items()},
        "exact_match_title_case": {name: rate for name, (rate, _) in capitalized.items()},
        "versions": {package.__name__: package.__version__ for package in (torch, transformers, peft)},
    }
    for name, (rate, misses) in lowercase.items():
        shown = ", ".join(f"{text!r} -> {out!r}" for text, out in misses[:5])
        print(f"{name:8s} {rate:6.1%}  (title case {capitalized[name][0]:6.1%})  {shown}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
