"""Token ids to text, one token at a time, without ever emitting a wrong character.

Decoding each token alone is wrong in two ways. A character can span tokens (byte-level BPE merges bytes,
SentencePiece's byte fallback emits ``<0xE2>``-style tokens), so a lone token decodes to U+FFFD. And
decoders are context-sensitive at the start of a text: LLaMA's strips the leading space that ``▁``
became, WordPiece keeps the ``##`` of a first token, so ``"▁world"`` alone is ``"world"``, not ``" world"``.

The cure is the prefix-offset / read-offset technique (text-generation-inference, vLLM): decode a window
that starts a few tokens back (``prefix``, already emitted) both without and with the new tokens, and emit
the difference. Both decodes start on the same token, so the start-of-text quirks cancel out. While the
window's text ends in U+FFFD the character is incomplete, so nothing is emitted and the window grows.
:meth:`flush` emits whatever is left, U+FFFD included, so the pieces add up to a full decode.

One exception, by design: tokenizers' ``ByteFallback`` decoder turns a *whole run* of ``<0x..>`` tokens
into U+FFFDs when any byte of it is invalid, so a stray byte generated later retroactively spoils
characters of the same run that were complete and already streamed. The stream keeps those characters
(fewer U+FFFDs than the full decode); for valid UTF-8 the two are always equal.
"""

from __future__ import annotations

from tokenizers import Tokenizer

_INCOMPLETE = "\ufffd"


class StreamDecoder:
    """Incremental detokenizer for one sequence; ``"".join(pushes) + flush() == tokenizer.decode(ids)``."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # start of the window: tokens before it are emitted and never decoded again
        self._read = 0  # tokens before it are emitted; [prefix, read) is the context of the next decode

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one generated token; return the text that became final (often ``""``)."""
        self.ids.append(int(token_id))
        prefix_text = self._decode(self.ids[self._prefix:self._read])
        new_text = self._decode(self.ids[self._prefix:])
        if len(new_text) > len(prefix_text) and not new_text.endswith(_INCOMPLETE):
            self._prefix, self._read = self._read, len(self.ids)
            return new_text[len(prefix_text):]
        return ""

    def flush(self) -> str:
        """The text still held back at the end (an incomplete character decodes to U+FFFD here)."""
        prefix_text = self._decode(self.ids[self._prefix:self._read])
        new_text = self._decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return new_text[len(prefix_text):]
