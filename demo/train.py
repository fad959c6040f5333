"""Trains the demo from scratch and writes its assets, deterministically, on CPU.

    python -m loraplex.demo.train [--output DIR] [--skip-base] [--adapters upper reverse rot13]

First the base model learns to echo (``<bos> text <sep>`` -> ``text <eos>``); it is saved with its
tokenizer. Then each adapter is trained on the saved base, in its own process (``--workers`` at a
time, one torch thread each), and saved by peft. The same command on the same software and CPU type
gives the same bytes: every run is seeded, single-threaded and uses deterministic algorithms.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaForCausalLM

from loraplex.demo import ADAPTER_NAMES, ASSETS_DIR
from loraplex.demo.recipe import (
    ADAPTER_MODEL_NAME,
    ADAPTER_RECIPES,
    BASE_SCHEDULE,
    THREADS,
    AdapterRecipe,
    Schedule,
    base_config,
    generation_config,
)
from loraplex.demo.tasks import TRANSFORMS, TrainingInputs
from loraplex.demo.tokenizer import PAD_ID, example_ids, save_tokenizer

Log = Callable[[str], None]


def make_deterministic(seed: int) -> None:
    """Seeds torch and pins it to ``THREADS`` threads and deterministic kernels."""
    torch.manual_seed(seed)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    torch.set_flush_denormal(True)


def collate(sources: list[str], task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``labels`` (-100 on prompt and padding) for ``task``."""
    examples = [example_ids(source, TRANSFORMS[task](source)) for source in sources]
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), PAD_ID)
    labels = torch.full((len(examples), width), -100)
    for row, (ids, targets) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(targets)] = torch.tensor(targets)
    return input_ids, labels


def batches(task: str, schedule: Schedule) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless length-bucketed training batches for ``task`` (see ``Schedule``)."""
    inputs = TrainingInputs(schedule.seed)
    order = random.Random(schedule.seed)
    size = schedule.batch_size
    while True:
        pool = sorted(inputs.take(size * schedule.buckets), key=len)
        chunks = [pool[i * size : (i + 1) * size] for i in range(schedule.buckets)]
        order.shuffle(chunks)
        for chunk in chunks:
            yield collate(chunk, task)


def learning_rate(schedule: Schedule, step: int) -> float:
    """Linear warmup over ``schedule.warmup`` steps, then cosine decay to zero."""
    warmup = min(1.0, (step + 1) / schedule.warmup)
    return schedule.lr * warmup * 0.5 * (1.0 + math.cos(math.pi * step / schedule.steps))


def fit(model: torch.nn.Module, task: str, schedule: Schedule, log: Log, log_every: int = 100) -> None:
    """Trains the parameters of ``model`` that require grad on ``task`` for ``schedule.steps`` steps."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=schedule.lr, betas=(0.9, 0.98), weight_decay=schedule.weight_decay
    )
    model.train()
    start = time.monotonic()
    for step, (input_ids, labels) in zip(range(schedule.steps), batches(task, schedule), strict=False):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(schedule, step)
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % log_every == 0 or step + 1 == schedule.steps:
            log(
                f"{task}: step {step + 1}/{schedule.steps} loss {loss.item():.4f} ({time.monotonic() - start:.0f}s)"
            )
    model.eval()


def train_base(schedule: Schedule = BASE_SCHEDULE, log: Log = print) -> LlamaForCausalLM:
    """A freshly initialised base model, trained to echo."""
    make_deterministic(schedule.seed)
    model = LlamaForCausalLM(base_config())
    model.generation_config = generation_config()
    fit(model, "echo", schedule, log)
    return model


def train_adapter(base: LlamaForCausalLM, recipe: AdapterRecipe, log: Log = print) -> PeftModel:
    """A LoRA adapter for ``recipe.task``, trained on top of ``base`` (which stays frozen)."""
    make_deterministic(recipe.schedule.seed)
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=recipe.rank,
        lora_alpha=recipe.alpha,
        lora_dropout=0.0,
        target_modules=list(recipe.target_modules),
        bias="none",
    )
    model = get_peft_model(base, config)
    fit(model, recipe.task, recipe.schedule, log)
    return model


def save_base(model: LlamaForCausalLM, directory: Path) -> None:
    """Writes config, generation config, float32 safetensors weights and the tokenizer."""
    model.save_pretrained(directory)
    save_tokenizer(directory)
    readable_by_all(directory)


def save_adapter(model: PeftModel, directory: Path) -> None:
    """Writes ``adapter_config.json`` and ``adapter_model.safetensors`` (peft's own format).

    The config then gets a stable ``base_model_name_or_path`` instead of a local path, and its
    ``target_modules`` (a set to peft) in sorted order, so that the file is reproducible.
    """
    model.save_pretrained(directory)
    (directory / "README.md").unlink(missing_ok=True)
    config_path = directory / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config.update(base_model_name_or_path=ADAPTER_MODEL_NAME, target_modules=sorted(config["target_modules"]))
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    readable_by_all(directory)


def readable_by_all(directory: Path) -> None:
    """Mode 644 for every file (safetensors writes 600), so a non-root server can read package data."""
    for path in directory.iterdir():
        path.chmod(0o644)


def load_base(directory: Path) -> LlamaForCausalLM:
    """The saved base model in float32, as the adapters are trained on it."""
    model = LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    return model


def _adapter_job(name: str, output: Path) -> float:
    """Trains and saves one adapter in a worker process; returns its wall time."""
    start = time.monotonic()
    base = load_base(output / "base")
    model = train_adapter(base, ADAPTER_RECIPES[name], log=lambda line: print(f"[{name}] {line}", flush=True))
    save_adapter(model, output / "adapters" / name)
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (``python -m loraplex.demo.train``)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output", type=Path, default=ASSETS_DIR, help="writes OUTPUT/base and OUTPUT/adapters/*"
    )
    parser.add_argument("--skip-base", action="store_true", help="reuse OUTPUT/base instead of training it")
    parser.add_argument("--adapters", nargs="*", choices=ADAPTER_NAMES, default=list(ADAPTER_NAMES))
    parser.add_argument(
        "--workers", type=int, default=2, help="adapters trained at once (results do not depend on it)"
    )
    args = parser.parse_args(argv)

    start = time.monotonic()
    if not args.skip_base:
        save_base(train_base(log=lambda line: print(line, flush=True)), args.output / "base")
        print(f"base: saved to {args.output / 'base'} after {time.monotonic() - start:.0f}s", flush=True)
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
        longest_first = sorted(args.adapters, key=lambda name: -ADAPTER_RECIPES[name].schedule.steps)
        jobs = {name: pool.submit(_adapter_job, name, args.output) for name in longest_first}
        for name, job in jobs.items():
            print(f"{name}: saved to {args.output / 'adapters' / name} after {job.result():.0f}s", flush=True)
    print(f"total: {time.monotonic() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
