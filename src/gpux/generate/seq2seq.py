"""The encoder–decoder loop: encode once, then one decoder step per token over the self-attention cache.

The graphs are gpux.convert.seq2seq's: the encoder returns each decoder layer's cross-attention keys and
values, which stay in onnxruntime's buffers (bound, never copied through numpy) for every step of the
batch; the self-attention cache moves from one step's outputs to the next step's inputs as in
gpux.generate.loop's :class:`~gpux.generate.loop.CacheLoop`. Rows start together from decoder prompts of
one length (``decoder_start_token_id``, or Whisper's start-of-transcript tokens), so the decoder needs no
padding mask of its own; the encoder's padding mask (text models) goes to every step. Sampling, stop
strings, streaming text and finish reasons are the decoder-only loop's own (:func:`~gpux.generate.loop.choose`),
so a seq2seq model takes the same parameters and answers in the same shape as a text-generation model.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from gpux.errors import UsageError
from gpux.generate.loop import Event, Sequence, _device, _raw, choose_all


class Seq2SeqLoop:
    """Runs an encoder graph once and a decoder graph per token (see the module docstring)."""

    def __init__(self, encoder: Any, decoder: Any, geometry: dict[str, Any], device: str = "cpu") -> None:
        self.encoder, self.decoder = encoder, decoder
        self.self_layers = [tuple(x) for x in geometry["self_layers"]]
        self.cross_layers = [tuple(x) for x in geometry["cross_layers"]]
        self.masked = geometry["main"] == "input_ids"
        self.start = int(geometry["decoder_start"])
        self.device = device
        self._device = _device(device)
        self.past_names = [f"past.{i}.{kv}" for i in range(len(self.self_layers)) for kv in ("key", "value")]
        self.cross_names = [f"cross.{i}.{kv}" for i in range(len(self.cross_layers)) for kv in ("key", "value")]
        self.dec_outputs = [o.name for o in decoder.session.get_outputs()]
        self.enc_outputs = [o.name for o in encoder.session.get_outputs()]

    def _bind_outputs(self, io: Any, names: list[str]) -> Any:
        raw = getattr(io, "_iobinding", None)
        for name in names:
            if raw is not None and self._device is not None:
                raw.bind_output(name, self._device)
            else:
                io.bind_output(name, self.device)
        return raw if raw is not None and self._device is not None else io

    def _run(self, graph: Any, io: Any) -> None:
        try:
            graph.session.run_with_iobinding(io)
        except Exception as exc:
            from gpux.errors import map_exceptions

            with map_exceptions(f"running {graph.path.name}"):
                raise exc
        graph.ran()

    def encode(self, feed: dict[str, np.ndarray]) -> list[Any]:
        """The cross-attention keys and values of a batch (onnxruntime values, kept where they were made)."""
        io = self.encoder.session.io_binding()
        for name, value in feed.items():
            io.bind_cpu_input(name, np.ascontiguousarray(value))
        holder = self._bind_outputs(io, self.enc_outputs)
        self._run(self.encoder, io)
        return list(holder.get_outputs())

    def empty_cache(self, batch: int) -> list[Any]:
        from onnxruntime import OrtValue

        return [_raw(OrtValue.ortvalue_from_numpy(np.zeros((batch, h, 0, d), np.float32), self.device))
                for h, d in self.self_layers for _ in "kv"]

    def step(self, ids: np.ndarray, mask: np.ndarray | None, past: list[Any], cross: list[Any]
             ) -> tuple[np.ndarray, list[Any]]:
        """Logits of each row's last position and the grown self-attention cache (not copied)."""
        io = self.decoder.session.io_binding()
        raw = getattr(io, "_iobinding", None)
        io.bind_cpu_input("decoder_input_ids", ids)
        if self.masked:
            assert mask is not None
            io.bind_cpu_input("encoder_attention_mask", mask)
        for name, value in zip([*self.past_names, *self.cross_names], [*past, *cross]):
            if raw is not None and self._device is not None:
                raw.bind_ortvalue_input(name, _raw(value))
            else:
                from onnxruntime import OrtValue

                io.bind_ortvalue_input(name, value if isinstance(value, OrtValue) else OrtValue(value))
        holder = self._bind_outputs(io, self.dec_outputs)
        self._run(self.decoder, io)
        logits, *present = holder.get_outputs()
        return np.asarray(logits.numpy()[:, -1, :], dtype=np.float32), present

    def run(self, seqs: list[Sequence], feed: dict[str, np.ndarray], pad_id: int,
            eos_ids: frozenset[int], cross: list[Any] | None = None) -> Iterator[list[Event]]:
        """Yield, after every step, the events of the rows still running. ``feed`` is the encoder's batch
        (one row per sequence; ``cross``: its encoding, when the caller already has it); each sequence's
        ``prompt`` is its decoder prompt, all of one length."""
        if len({len(s.prompt) for s in seqs}) != 1:
            raise UsageError("rows of one encoder–decoder batch need decoder prompts of one length",
                             hint="run rows with different decoder prompts in separate batches")
        cross = cross if cross is not None else self.encode(feed)
        mask = feed.get("attention_mask") if self.masked else None
        ids = np.asarray([s.prompt for s in seqs], np.int64)
        past = self.empty_cache(len(seqs))
        while True:
            logits, past = self.step(ids, mask, past, cross)
            events, nxt = choose_all(seqs, logits, pad_id, eos_ids)
            if events:
                yield events
            if all(s.finish_reason is not None for s in seqs):
                return
            ids = nxt
