"""Prompts, and optionally output lengths, from a file instead of synthetic words.

Formats, told apart by content:

- JSON Lines, one object per line, or a JSON list of such objects: the prompt under "prompt" (or
  "text", "input"); the output length in tokens as "output_len" (or "max_new_tokens"), or a reference
  answer as "completion" (or "output", "response") whose token count becomes the output length.
- ShareGPT: a JSON list of {"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}]}
  (also "messages" with "role"/"content"); the first user turn is the prompt and the turn after it the
  reference answer, as vLLM's serving benchmark reads it.

Tokens are counted by the server (POST /tokenize), so lengths are the model's own. As in vLLM's
benchmark, entries with a prompt or a reference answer under 4 tokens are skipped, and so are those the
server would refuse (prompt over max_input_length, prompt + output over max_total_tokens, from /info;
on a server without /info, such as vLLM, prompt + output over the max_model_len its /tokenize states).
A fixed-seed shuffle of the usable entries then picks the requests, so a seed names the same prompts on
every run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

MIN_TOKENS = 4
_PROMPT_KEYS = ("prompt", "text", "input")
_LENGTH_KEYS = ("output_len", "max_new_tokens")
_ANSWER_KEYS = ("completion", "output", "response")
_USER_ROLES = ("human", "user")


@dataclass(frozen=True)
class DatasetEntry:
    """One entry as read: the prompt, and its output length or reference answer if the file has one."""

    prompt: str
    output_len: int | None = None
    answer: str | None = None


@dataclass(frozen=True)
class DatasetPrompt:
    """A usable entry, counted: `output_len` None means "draw it from the workload's distribution"."""

    prompt: str
    prompt_ids: tuple[int, ...]
    output_len: int | None


@dataclass(frozen=True)
class Dataset:
    """The prompts a workload sends, in send order, and what the report says about where they came from."""

    prompts: tuple[DatasetPrompt, ...]
    name: str
    sha256: str
    entries: int
    examined: int  # entries counted before enough were usable

    def describe(self) -> dict:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "entries": self.entries,
            "examined": self.examined,
            "chosen": len(self.prompts),
        }


def _first(record: dict, keys: tuple[str, ...]):
    return next((record[key] for key in keys if record.get(key) is not None), None)


def _conversation_entry(turns: list, where: str) -> DatasetEntry | None:
    """The first user turn and the turn after it; None when the conversation has no user turn."""
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ValueError(f"{where}: a conversation turn must be an object")
        role = turn.get("from", turn.get("role"))
        if role in _USER_ROLES:
            text = turn.get("value", turn.get("content"))
            if not isinstance(text, str):
                raise ValueError(f"{where}: a turn's text must be a string")
            following = turns[i + 1] if i + 1 < len(turns) else {}
            answer = following.get("value", following.get("content")) if isinstance(following, dict) else None
            return DatasetEntry(text, answer=answer if isinstance(answer, str) else None)
    return None


def parse_entry(record: object, where: str) -> DatasetEntry | None:
    """One JSON record -> an entry (None: a conversation without a user turn). ValueError names `where`."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    turns = record.get("conversations", record.get("messages"))
    if isinstance(turns, list):
        return _conversation_entry(turns, where)
    prompt = _first(record, _PROMPT_KEYS)
    if not isinstance(prompt, str):
        raise ValueError(f"{where}: no prompt (a string under one of {', '.join(_PROMPT_KEYS)})")
    length = _first(record, _LENGTH_KEYS)
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
        raise ValueError(f"{where}: the output length must be a positive integer, got {length!r}")
    answer = _first(record, _ANSWER_KEYS)
    return DatasetEntry(prompt, length, answer if isinstance(answer, str) else None)


def read_entries(path: Path) -> list[DatasetEntry]:
    """Every entry of a JSON Lines, JSON-list or ShareGPT file (see the module docstring)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot be read ({error})") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
        pairs = [(record, f"{path}: entry {i}") for i, record in enumerate(records)]
    else:
        pairs = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                pairs.append((json.loads(line), f"{path}:{number}"))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error})") from None
    entries = [entry for record, where in pairs if (entry := parse_entry(record, where)) is not None]
    if not entries:
        raise ValueError(f"{path}: no prompts found")
    return entries


def count_tokens(client: httpx.Client, url: str, text: str) -> tuple[list[int], int | None]:
    """The token ids the server's tokenizer gives `text`, and the model's context length if the answer
    states it: POST /tokenize, answered in TGI's format (a list of {"id", ...}: loraplex, LoRAX) or
    vLLM's ({"tokens": [...], "max_model_len": N}); the request body suits both."""
    try:
        response = client.post(url + "/tokenize", json={"inputs": text, "prompt": text})
    except httpx.HTTPError as error:
        raise RuntimeError(f"/tokenize at {url} failed: {error}") from None
    if response.status_code != 200:
        raise RuntimeError(f"/tokenize answered HTTP {response.status_code}: {response.text[:200]}")
    answer = response.json()
    if isinstance(answer, dict) and isinstance(answer.get("tokens"), list):
        return [int(token) for token in answer["tokens"]], answer.get("max_model_len")
    return [token["id"] for token in answer], None


def usable(
    entry: DatasetEntry,
    prompt_ids: list[int],
    answer_len: int | None,
    max_input_length: int | None,
    max_total_tokens: int | None,
) -> DatasetPrompt | None:
    """The counted entry, or None when it is too short or the server would refuse it."""
    output_len = entry.output_len if entry.output_len is not None else answer_len
    if len(prompt_ids) < MIN_TOKENS or (output_len is not None and output_len < MIN_TOKENS):
        return None
    if max_input_length is not None and len(prompt_ids) > max_input_length:
        return None
    if max_total_tokens is not None and len(prompt_ids) + (output_len or 1) > max_total_tokens:
        return None
    return DatasetPrompt(entry.prompt, tuple(prompt_ids), output_len)


def load_dataset(
    path: Path, url: str, num_requests: int, seed: int, info: dict, timeout: float = 30.0
) -> Dataset:
    """Read `path`, count tokens on the server at `url`, and pick `num_requests` usable entries.

    `info` is the server's /info (its length limits filter entries). Entries are counted in a seeded
    random order until enough are usable, so a large file costs only as many /tokenize calls as needed.
    """
    path = Path(path)
    entries = read_entries(path)
    order = np.random.default_rng([seed, 4]).permutation(len(entries))
    # loraplex and LoRAX state their limits in /info; vLLM states its context in /tokenize answers.
    max_input, max_total = info.get("max_input_length"), info.get("max_total_tokens")
    chosen: list[DatasetPrompt] = []
    examined = 0
    url = url.rstrip("/")
    with httpx.Client(timeout=timeout) as client:
        for index in order:
            examined += 1
            entry = entries[int(index)]
            prompt_ids, context = count_tokens(client, url, entry.prompt)
            max_total = max_total if max_total is not None else context
            answer_len = None
            if entry.output_len is None and entry.answer is not None:
                answer_len = len(count_tokens(client, url, entry.answer)[0])
            prompt = usable(entry, prompt_ids, answer_len, max_input, max_total)
            if prompt is not None:
                chosen.append(prompt)
                if len(chosen) == num_requests:
                    break
    if len(chosen) < num_requests:
        raise ValueError(
            f"{path}: only {len(chosen)} of its {len(entries)} entries are usable on this server "
            f"(at least {MIN_TOKENS} tokens, within its length limits); ask for at most that many requests"
        )
    return Dataset(
        tuple(chosen),
        path.name,
        hashlib.sha256(path.read_bytes()).hexdigest(),
        entries=len(entries),
        examined=examined,
    )
