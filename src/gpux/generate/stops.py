"""Stop strings on a stream of text.

Text arrives in pieces (one detokenised token at a time), and a stop string can straddle pieces, so the
tail that could still become a stop is held back, and only that: the longest suffix that is a prefix of
some stop string. When a stop completes, the text before it is emitted and the stop string and anything
after it are dropped, as OpenAI and Hugging Face do.

When several stops could match, the one that *completes first* wins (that is when a token-by-token server
would have stopped); among those ending at the same place, the one starting earliest.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Cut a text stream at the first stop string; see the module docstring."""

    def __init__(self, stops: Sequence[str]) -> None:
        if isinstance(stops, str):
            stops = (stops,)
        self.stops: tuple[str, ...] = tuple(s for s in stops if s)
        self._prefixes = frozenset(s[:i] for s in self.stops for i in range(1, len(s)))
        self._longest = max((len(s) for s in self.stops), default=0)
        self._held = ""
        self.hit: str | None = None  # the stop string that ended the stream, once one has

    def push(self, text: str) -> tuple[str, bool]:
        """Add ``text``; return (what is safe to emit now, whether a stop string was hit)."""
        if self.hit is not None:
            return "", True
        buf = self._held + text
        if not self.stops:
            return buf, False
        best: tuple[int, int, str] | None = None  # (end, start, stop)
        # A stop completing in this push must end inside the new text, so the search can start just
        # before it; the held part contains no complete stop by construction.
        lo = max(0, len(self._held) - self._longest + 1)
        for stop in self.stops:
            i = buf.find(stop, lo)
            if i >= 0:
                cand = (i + len(stop), i, stop)
                if best is None or cand[:2] < best[:2]:
                    best = cand
        if best is not None:
            self.hit = best[2]
            self._held = ""
            return buf[:best[1]], True
        keep = 0
        for n in range(min(len(buf), self._longest - 1), 0, -1):
            if buf[-n:] in self._prefixes:
                keep = n
                break
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep], False

    def flush(self) -> str:
        """The text still held back at the end of the stream (it never completed a stop)."""
        out, self._held = self._held, ""
        return "" if self.hit is not None else out
