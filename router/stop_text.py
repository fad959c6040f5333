"""OpenAI-style stop sequences: the returned text ends before the first stop sequence.

While streaming, the last few characters are held back until it is certain they do not begin a stop
sequence, so no part of a stop sequence is ever sent.
"""

from __future__ import annotations


def find_stop(text: str, stops: list[str]) -> tuple[int, str] | None:
    """Where the text ends and the stop sequence that ends it: the earliest occurrence of any stop
    sequence, the shortest of those starting there (the one generation reached first); None if none."""
    found = [(i, len(s), s) for s in stops if (i := text.find(s)) >= 0]
    if not found:
        return None
    index, _, stop = min(found)
    return index, stop


def cut_at_stop(text: str, stops: list[str]) -> str:
    found = find_stop(text, stops)
    return text if found is None else text[: found[0]]


class StopTrimmer:
    def __init__(self, stops: list[str]):
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.seen = ""
        self.sent = 0

    def feed(self, delta: str, finished: bool, final_text: str) -> str:
        """The text safe to send now, given the newest token's text (and the whole text at the end)."""
        self.seen = final_text if finished else self.seen + delta
        visible = cut_at_stop(self.seen, self.stops)
        end = (
            len(visible)
            if finished or len(visible) < len(self.seen)
            else max(len(visible) - self.hold, self.sent)
        )
        if visible != self.seen:
            end = len(visible)
        out = visible[self.sent : end]
        self.sent = max(self.sent, end)
        return out
