"""Speech recognition with an encoder–decoder (Whisper): audio -> log-mel -> encoder once -> decoded text.

Payload::

    {"inputs": ["a.wav", ...], "parameters": {"language": "en" | "english" | null, "task": "transcribe" |
     "translate", "return_timestamps": false, "max_new_tokens": 444}}
    -> {"transcriptions": [{"text", "language", "segments": [{"start", "end", "text"}]}]}

As transformers' ``WhisperForConditionalGeneration.generate(return_timestamps=True)`` decodes (greedy): the
decoder prompt is start-of-transcript, then for multilingual models the language (detected from the first
step's language tokens when not given) and task tokens; the model's ``suppress_tokens`` and
``begin_suppress_tokens`` apply, and the timestamp rules (gpux.generate.timestamps). Timestamp tokens are
always decoded, as OpenAI's ``transcribe`` and faster-whisper do: without them Whisper often ends a window
after its first sentence (measured: tiny.en stopped after 23 words of a 30 s clip), with them it goes on to
the window's end; ``segments`` are returned when ``return_timestamps`` asks. Clips up to 30 s are batched (one encoder call, one decode loop per prompt
shape); longer clips are transcribed window by window, each window starting where the previous one's last
complete segment ended (OpenAI's sequential long-form), so a 70 s clip comes back whole, with segments.
Features are gpux.preprocess's numpy ``WhisperFeatureExtractor`` (max-abs 1.2e-7 from transformers').
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gpux.errors import UsageError
from gpux.generate.loop import Sequence
from gpux.generate.rules import decoder_rules
from gpux.generate.sampling import Sampler, SamplingParams
from gpux.generate.seq2seq import Seq2SeqLoop
from gpux.generate.timestamps import PRECISION, segments, timestamp_rule
from gpux.tasks import known_parameters, parameters
from gpux.tasks.media import AudioTask

if TYPE_CHECKING:
    from gpux.engine.model import Model

PARAMETERS = ("language", "task", "return_timestamps", "max_new_tokens")
#: Whisper's language names (the tokenizer's codes are what the model knows; names are a convenience).
NAMES = {"english": "en", "german": "de", "french": "fr", "spanish": "es", "italian": "it", "chinese": "zh",
         "japanese": "ja", "russian": "ru", "portuguese": "pt", "dutch": "nl", "korean": "ko", "arabic": "ar",
         "hindi": "hi", "turkish": "tr", "polish": "pl", "swedish": "sv", "ukrainian": "uk"}


@dataclass
class Clip:
    """One input: its 16 kHz waveform and what its request asked for."""

    wave: np.ndarray
    language: str | None
    task: str
    timestamps: bool
    max_new_tokens: int | None


class _Quiet:
    """The stream decoder and stop matcher a Sequence needs, doing nothing (text is decoded once, at the end)."""

    def push(self, token: Any) -> Any:
        return ("", False) if isinstance(token, str) else ""

    def flush(self) -> str:
        return ""


class SpeechToText(AudioTask):
    answer_key = "transcriptions"
    unit = "clips"
    max_seconds = 3600.0

    def __init__(self, model: Model) -> None:
        super().__init__(model)
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(model.bundle.root / model.bundle.manifest.assets["tokenizer"]))
        self.s2s = Seq2SeqLoop(model.graphs["encoder"], model.graphs["decoder"], self.config["seq2seq"])
        speech = self.config.get("speech") or {}
        gen = self.config["generation"]
        self.eos = int(gen["eos_token_ids"][0])
        self.sot = self.s2s.start
        self.no_ts = int(speech.get("no_timestamps_token_id") or self.eos + 105)
        self.begin = self.no_ts + 1
        self.max_initial = speech.get("max_initial_timestamp_index")
        self.langs: dict[str, int] = {k.strip("<|>"): int(v) for k, v in (speech.get("lang_to_id") or {}).items()}
        self.tasks: dict[str, int] = {k: int(v) for k, v in (speech.get("task_to_id") or {}).items()}
        self.multilingual = bool(speech.get("is_multilingual", bool(self.langs)))
        self.rules = self.config.get("rules") or {}
        self.max_target = int(self.config["max_target"])
        self.window = int(self.processor.chunk_length) * self.rate  # type: ignore[attr-defined]

    # -- inputs ---------------------------------------------------------------------------------------
    def items(self, payload: dict[str, Any]) -> list[Any]:
        params = parameters(payload)
        known_parameters(params, PARAMETERS, "automatic-speech-recognition")
        language = params.get("language")
        if language is not None:
            language = self._language(language)
        task = params.get("task") or "transcribe"
        if task not in ("transcribe", "translate"):
            raise UsageError(f'"task" must be "transcribe" or "translate", not {task!r}',
                             hint='"translate" makes English text from other languages (multilingual models)')
        if task == "translate" and not self.tasks:
            raise UsageError(f"model {self.model.name!r} is English-only: it cannot translate",
                             hint='leave "task" out, or use a multilingual Whisper model')
        stamps = params.get("return_timestamps", False)
        if not isinstance(stamps, bool):
            raise UsageError('"return_timestamps" must be true or false', hint='e.g. "return_timestamps": true')
        new = params.get("max_new_tokens")
        if new is not None and (isinstance(new, bool) or not isinstance(new, int) or not 1 <= new <= self.max_target):
            raise UsageError(f'"max_new_tokens" must be an integer from 1 to {self.max_target}',
                             hint='e.g. "max_new_tokens": 128')
        return [Clip(self.prepare(s, i), language, task, stamps, new) for i, s in enumerate(self.sources(payload))]

    def _language(self, value: Any) -> str:
        code = NAMES.get(str(value).lower(), str(value).lower().strip("<|>"))
        if not self.multilingual:
            if code != "en":
                raise UsageError(f"model {self.model.name!r} is English-only; it cannot transcribe {value!r}",
                                 hint='leave "language" out, or use a multilingual Whisper model')
            return "en"
        if code not in self.langs:
            raise UsageError(f"language {value!r} is not one this model knows",
                             hint=f"use a code such as {', '.join(sorted(self.langs)[:8])}...")
        return code

    # -- running --------------------------------------------------------------------------------------
    def run_counted(self, items: list[Any], truncate: bool | None = None) -> tuple[list[Any], list[int]]:
        answers: list[Any] = [None] * len(items)
        short = [i for i, c in enumerate(items) if len(c.wave) <= self.window]
        for i in range(len(items)):
            if i not in short:
                answers[i] = self._long(items[i])
        for start in range(0, len(short), 8):
            rows = short[start:start + 8]
            for i, answer in zip(rows, self._windows([items[i] for i in rows], [items[i].wave for i in rows],
                                                     [True] * len(rows))):
                text, language, found, advance = answer
                seek = int(advance * self.rate) if found and advance >= 1.0 else len(items[i].wave)
                # The window ended early (after a complete segment, well before the clip's end): go on from
                # there, as OpenAI's transcribe seeks, instead of dropping the rest of the clip.
                answers[i] = (self._long(items[i], seek, [text], found, language) if seek < len(items[i].wave) - self.rate
                              else self._answer(items[i], text, language, found))
        return answers, [1] * len(items)

    def _answer(self, clip: Clip, text: str, language: str, found: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"text": text.strip(), "language": language}
        if clip.timestamps:
            out["segments"] = found
        return out

    def _long(self, clip: Clip, seek: int = 0, parts: list[str] | None = None,
              found: list[dict[str, Any]] | None = None, language: str | None = None) -> dict[str, Any]:
        """Sequential long-form: 30 s windows, each starting where the last complete segment ended (from
        sample ``seek``, after the ``parts`` and ``found`` segments of windows already done)."""
        language = language or clip.language
        parts = list(parts or [])
        found = list(found or [])
        while seek < len(clip.wave) - self.rate // 50:  # less than one 20 ms step left: done
            piece = clip.wave[seek:seek + self.window]
            fixed = Clip(piece, language, clip.task, True, clip.max_new_tokens)
            text, language, segs, advance = self._windows([fixed], [piece], [True])[0]
            offset = seek / self.rate
            for seg in segs:
                found.append({**seg, "start": round(seg["start"] + offset, 2), "end": round(seg["end"] + offset, 2)})
            parts.append(text)
            seek += int(advance * self.rate) if segs and advance >= 1.0 else len(piece)
        out: dict[str, Any] = {"text": "".join(parts).strip(), "language": language or "en"}
        if clip.timestamps:
            out["segments"] = found
        return out

    def _windows(self, clips: list[Clip], waves: list[np.ndarray], stamps: list[bool]
                 ) -> list[tuple[str, str, list[dict[str, Any]], float]]:
        """Transcribe windows of at most 30 s: (text, language, segments, seconds to seek) each."""
        feed = {"input_features": self.processor(waves)["input_features"]}
        cross = self.s2s.encode(feed)
        languages = [c.language or ("en" if not self.multilingual else None) for c in clips]
        missing = [i for i, lang in enumerate(languages) if lang is None]
        if missing:
            detected = self._detect(cross, len(clips))
            for i in missing:
                languages[i] = detected[i]
        seqs = []
        for clip, lang, ts in zip(clips, languages, stamps):
            prompt = self._prompt(lang, clip.task, ts)
            room = self.max_target - len(prompt)
            limit = min(clip.max_new_tokens or room, room)
            rule = decoder_rules(self.rules, frozenset({self.eos}), limit)
            if ts:
                rule = timestamp_rule(self.begin, self.eos, self.max_initial, rule)
            params = SamplingParams(max_new_tokens=limit)
            seqs.append(Sequence(prompt, params, Sampler(params, stats=False), _Quiet(), _Quiet(), limit,  # type: ignore[arg-type]
                                 process=rule))
        groups: dict[int, list[int]] = {}
        for i, s in enumerate(seqs):
            groups.setdefault(len(s.prompt), []).append(i)
        for rows in groups.values():
            sub_cross = cross if len(rows) == len(seqs) else self._rows(cross, rows)
            for _ in self.s2s.run([seqs[i] for i in rows], feed, self.eos, frozenset({self.eos}), cross=sub_cross):
                pass
        out = []
        for s, lang, wave, ts in zip(seqs, languages, waves, stamps):
            window_s = len(wave) / self.rate
            if ts:
                segs, seek = segments(s.tokens, self.begin, self.eos, window_s)
                found = [{"start": round(min(g.start, window_s), 2), "end": round(min(g.end, window_s), 2),
                          "text": self._decode(list(g.tokens))} for g in segs]
                text = "".join(str(f["text"]) for f in found)
            else:
                text, found, seek = self._decode(s.tokens), [], window_s
            out.append((text, str(lang), found, seek))
        return out

    def _prompt(self, language: str | None, task: str, timestamps: bool) -> list[int]:
        prompt = [self.sot]
        if self.multilingual and self.langs:
            prompt.append(self.langs[language or "en"])
            if self.tasks:
                prompt.append(self.tasks[task])
        if not timestamps:
            prompt.append(self.no_ts)
        return prompt

    def _detect(self, cross: list[Any], batch: int) -> list[str]:
        """The language of each row: the likeliest language token after start-of-transcript (as Whisper does)."""
        logits, _ = self.s2s.step(np.full((batch, 1), self.sot, np.int64), None, self.s2s.empty_cache(batch), cross)
        codes, ids = list(self.langs), np.asarray(list(self.langs.values()))
        return [codes[int(row[ids].argmax())] for row in logits]

    def _rows(self, cross: list[Any], rows: list[int]) -> list[Any]:
        from onnxruntime import OrtValue

        return [OrtValue.ortvalue_from_numpy(np.ascontiguousarray(np.asarray(v.numpy())[rows])) for v in cross]

    def _decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode([t for t in tokens if t < self.eos], skip_special_tokens=True))

    def seconds(self, items: list[Any]) -> float:
        """Audio seconds in ``items`` (the unit of speed: audio seconds per second)."""
        return float(sum(len(c.wave) for c in items)) / self.rate


__all__ = ["PRECISION", "SpeechToText"]
