"""The demo's tasks: the four string transforms and the deterministic inputs they are trained on.

Inputs are words and short phrases: lowercase letters and spaces, now and then a digit or one of
``.,!?'-``, at most ``MAX_INPUT_CHARS`` characters. They are drawn from five kinds, all generated in
code from a seed: real words (``loraplex.demo.words``), phrases of real and made-up words, made-up
words built from syllables, random letter strings, and words mixed with digits or punctuation.

Training also draws repetitive strings (``"lil lilbo"``), where copying by content alone goes
wrong, and gives some inputs capitals, so ``"Hello World"`` works too. The held-out set is lowercase.

``heldout_inputs()`` is a fixed set that training never sees: ``TrainingInputs`` rejects every
held-out string and every string that contains a held-out word.
"""

from __future__ import annotations

import codecs
import random
from collections.abc import Callable, Iterator
from functools import cache

from loraplex.demo.words import HELDOUT_WORDS, TRAIN_WORDS

MAX_INPUT_CHARS = 24
HELDOUT_SIZE = 200
HELDOUT_SEED = 20240607

LETTERS = "abcdefghijklmnopqrstuvwxyz"
ONSETS = ("b c d f g h j k l m n p r s t v w z br ch cl dr fl gr pl sh st th tr").split()
VOWELS = ("a e i o u a e i o ai ea ee oo ou").split()
CODAS = ("", "", "", "n", "r", "s", "t", "l", "m", "ck", "nd", "st", "ng")
PUNCTUATION = ".,!?"

TRANSFORMS: dict[str, Callable[[str], str]] = {
    "echo": lambda text: text,
    "upper": str.upper,
    "reverse": lambda text: text[::-1],
    "rot13": lambda text: codecs.encode(text, "rot13"),
}
"""Task name -> transform. ``echo`` is the base model's task; the others are its adapters'."""


def pseudo_word(rng: random.Random) -> str:
    """A pronounceable made-up word of one to four syllables."""
    syllables = rng.choice((1, 2, 2, 3, 3, 4))
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables))


def letter_string(rng: random.Random, max_chars: int) -> str:
    """Random lowercase letters, with a single space now and then (never at either end)."""
    length = rng.randint(1, max_chars)
    chars = [rng.choice(LETTERS) if rng.random() > 0.12 else " " for _ in range(length)]
    return " ".join("".join(chars).split()) or rng.choice(LETTERS)


def repetitive(rng: random.Random, max_chars: int) -> str:
    """A string that repeats a few short pieces (``"lil lilbo bolil"``): copying it needs positions."""
    pieces = [pseudo_word(rng)[: rng.randint(1, 4)] for _ in range(rng.randint(2, 3))]
    target = rng.randint(6, max_chars)
    text = ""
    while len(text) < target:
        text += rng.choice(pieces) + (" " if rng.random() < 0.2 else "")
    return " ".join(text[:max_chars].split())


def phrase(rng: random.Random, words: tuple[str, ...], max_chars: int) -> str:
    """Two or more words (mostly real, some made up) joined by single spaces."""
    target = rng.randint(6, max_chars)
    parts: list[str] = []
    while True:
        word = rng.choice(words) if rng.random() < 0.75 else pseudo_word(rng)
        candidate = " ".join([*parts, word])
        if len(candidate) > target and len(parts) >= 2 or len(candidate) > max_chars:
            break
        parts.append(word)
    return " ".join(parts) if parts else rng.choice(words)


def mixed(rng: random.Random, words: tuple[str, ...]) -> str:
    """A word or two with digits or punctuation mixed in."""
    a, b = rng.choice(words), rng.choice(words)
    number = str(rng.randint(0, 10 ** rng.randint(1, 4) - 1))
    return rng.choice(
        (
            f"{a} {number}",
            f"{number} {a}s",
            f"{a}{rng.choice(PUNCTUATION)}",
            f"{a}, {b}{rng.choice(PUNCTUATION)}",
            f"{a}-{b}",
            f"{a}'s {b}",
            f"{a} {number} {b}",
        )
    )


KINDS = ("word", "phrase", "pseudo", "letters", "mixed", "repetitive")


def sample_input(rng: random.Random, words: tuple[str, ...], kind: str, max_chars: int) -> str:
    """One input of the given kind, at most ``max_chars`` characters."""
    if kind == "word":
        text = rng.choice(words)
    elif kind == "phrase":
        text = phrase(rng, words, max_chars)
    elif kind == "pseudo":
        text = pseudo_word(rng)
    elif kind == "letters":
        text = letter_string(rng, max_chars)
    elif kind == "mixed":
        text = mixed(rng, words)
    elif kind == "repetitive":
        text = repetitive(rng, max_chars)
    else:
        raise ValueError(f"unknown input kind {kind!r}")
    return text[:max_chars].strip() or rng.choice(LETTERS)


HELDOUT_KINDS = ("word",) * 5 + ("phrase",) * 6 + ("pseudo",) * 4 + ("letters",) * 3 + ("mixed",) * 2
"""The held-out set's mix of kinds, cycled: a quarter single words, 30% phrases, and so on."""


@cache
def _heldout() -> tuple[str, ...]:
    rng = random.Random(HELDOUT_SEED)
    words = HELDOUT_WORDS + TRAIN_WORDS
    seen: dict[str, None] = {}
    index = 0
    while len(seen) < HELDOUT_SIZE:
        kind = HELDOUT_KINDS[index % len(HELDOUT_KINDS)]
        text = sample_input(rng, HELDOUT_WORDS if kind == "word" else words, kind, MAX_INPUT_CHARS)
        if text not in seen:
            seen[text] = None
            index += 1
    return tuple(seen)


def heldout_inputs(n: int = HELDOUT_SIZE) -> list[str]:
    """The first ``n`` of the ``HELDOUT_SIZE`` held-out inputs (the five kinds mixed, in a fixed order).

    None of them appears in training, and neither does any word of ``HELDOUT_WORDS``.
    """
    if not 0 <= n <= HELDOUT_SIZE:
        raise ValueError(f"n must be between 0 and {HELDOUT_SIZE}, got {n}")
    return list(_heldout()[:n])


TRAIN_KIND_WEIGHTS = {"word": 2, "phrase": 4, "pseudo": 2, "letters": 4, "mixed": 2, "repetitive": 2}
"""How often training draws each kind (repetitive strings are never held out)."""
CAPITALIZED_SHARE = 0.12
"""Share of training inputs given capitals (``capitalize``/``title``/``upper``), so mixed-case text works."""


def capitalized(rng: random.Random, text: str) -> str:
    """``text`` with a first capital, title case, or all capitals."""
    return rng.choice((str.capitalize, str.title, str.title, str.upper))(text)


class TrainingInputs:
    """An endless, seeded stream of training inputs of at most ``max_chars`` characters.

    It never yields a held-out input, nor a text containing a word of ``HELDOUT_WORDS``.
    """

    def __init__(self, seed: int, max_chars: int = MAX_INPUT_CHARS) -> None:
        self.rng = random.Random(seed)
        self.max_chars = max_chars
        self._kinds = [kind for kind, weight in TRAIN_KIND_WEIGHTS.items() for _ in range(weight)]
        self._excluded = set(_heldout())
        self._excluded_words = set(HELDOUT_WORDS)

    def _allowed(self, text: str) -> bool:
        if len(text) > self.max_chars or text in self._excluded:
            return False
        tokens = text.replace(",", " ").replace("-", " ").replace("'", " ").split()
        return not any(token.rstrip(PUNCTUATION) in self._excluded_words for token in tokens)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        while True:
            kind = self.rng.choice(self._kinds)
            text = sample_input(self.rng, TRAIN_WORDS, kind, self.max_chars)
            if self._allowed(text):
                return capitalized(self.rng, text) if self.rng.random() < CAPITALIZED_SHARE else text

    def take(self, n: int) -> list[str]:
        """The next ``n`` inputs."""
        return [next(self) for _ in range(n)]
