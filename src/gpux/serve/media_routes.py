"""OpenAI's ``POST /v1/audio/transcriptions`` (multipart upload) for speech recognition models.

The file arrives as uploaded bytes (a request never names a path on the server's disk), goes through the
model's task like any other input (decoded, mixed to mono, resampled) and the dynamic batcher. Formats:
``json`` (``{"text"}``, the default), ``text`` (plain), ``verbose_json`` (``task``, ``language``,
``duration``, ``text``, and ``segments`` when the model gives timestamps), ``srt`` and ``vtt`` (need
timestamps: models that have none refuse them with a 400 saying so).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from gpux.errors import UsageError
from gpux.serve import schemas
from gpux.serve.app import FastJSON, run_items

FORMATS = ("json", "text", "verbose_json", "srt", "vtt")


def _clock(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def subtitles(segments: list[dict[str, Any]], fmt: str) -> str:
    """SubRip (``srt``) or WebVTT (``vtt``) cues of ``segments`` (start, end, text), as OpenAI writes them."""
    if fmt == "srt":
        return "".join(f"{i}\n{_clock(s['start'], ',')} --> {_clock(s['end'], ',')}\n{s['text'].strip()}\n\n"
                       for i, s in enumerate(segments, 1))
    return "WEBVTT\n\n" + "".join(f"{_clock(s['start'], '.')} --> {_clock(s['end'], '.')}\n{s['text'].strip()}\n\n"
                                   for s in segments)


def register(app: FastAPI) -> None:
    @app.post("/v1/audio/transcriptions", openapi_extra=schemas.multipart(schemas.TRANSCRIPTION))
    async def transcriptions(request: Request) -> Any:
        return await _speech(app, request, "transcribe")

    @app.post("/v1/audio/translations", openapi_extra=schemas.multipart(schemas.TRANSCRIPTION))
    async def translations(request: Request) -> Any:
        return await _speech(app, request, "translate")


async def _speech(app: FastAPI, request: Request, task: str) -> Any:
    try:
        form = await request.form()
    except Exception as exc:  # not multipart, or a broken one
        raise UsageError(f"the body must be multipart/form-data with the audio as 'file': {exc}",
                         hint="curl -F file=@speech.wav -F model=NAME .../v1/audio/transcriptions") from exc
    upload, model = form.get("file"), form.get("model")
    if upload is None or isinstance(upload, str):
        raise UsageError('the form needs "file": the audio, uploaded', hint="-F file=@speech.wav")
    if not isinstance(model, str) or not model:
        raise UsageError('the form needs "model": a stored speech recognition model', hint="-F model=NAME")
    fmt = str(form.get("response_format") or "json")
    if fmt not in FORMATS:
        raise UsageError(f'response_format "{fmt}" is not one of {", ".join(FORMATS)}', hint="-F response_format=json")
    temperature = form.get("temperature")
    if temperature not in (None, "", "0", "0.0"):
        raise UsageError("only temperature 0 (greedy decoding) is supported", hint="leave temperature out")
    language = form.get("language")
    data = await upload.read()
    duration: list[float] = []

    def check(loaded: Any, items: list[Any]) -> list[Any]:
        if loaded.model.bundle.manifest.task != "automatic-speech-recognition":
            raise UsageError(f"model {loaded.name} is not a speech recognition model (task: "
                             f"{loaded.model.bundle.manifest.task})", hint="use an automatic-speech-recognition model")
        generates = hasattr(loaded.task, "max_target")  # an encoder–decoder (Whisper): timestamps, languages
        if fmt in ("srt", "vtt") and not generates:
            raise UsageError(f"response_format {fmt} needs timestamps, which this model does not give",
                             hint="use json, text or verbose_json")
        if not generates:
            if task == "translate" or language:
                raise UsageError(f"model {loaded.name} has no languages to choose (a CTC model)",
                                 hint="use a multilingual Whisper model, or leave language out")
            return _timed(loaded, loaded.task.items({"inputs": [data]}), duration)
        params: dict[str, Any] = {"task": task, "return_timestamps": fmt in ("srt", "vtt", "verbose_json")}
        if isinstance(language, str) and language:
            params["language"] = language
        return _timed(loaded, loaded.task.items({"inputs": [data], "parameters": params}), duration)

    loaded, results, _ = await run_items(app, f"openai.{task}", model, [data], None, check, request=request)
    answer = results[0][0]
    if fmt == "text":
        return PlainTextResponse(answer["text"] + "\n")
    if fmt in ("srt", "vtt"):
        return PlainTextResponse(subtitles(answer.get("segments", []), fmt),
                                 media_type="text/vtt" if fmt == "vtt" else "application/x-subrip")
    if fmt == "verbose_json":
        return FastJSON({"task": "translate" if task == "translate" else "transcribe",
                         "language": answer.get("language"), "duration": round(duration[0], 3) if duration else None,
                         "text": answer["text"],
                         "segments": [{"id": i, **seg} for i, seg in enumerate(answer.get("segments", []))]})
    return FastJSON({"text": answer["text"]})


def _timed(loaded: Any, items: list[Any], duration: list[float]) -> list[Any]:
    """``items`` unchanged; the clip's length in seconds noted in ``duration`` (verbose_json's field)."""
    rate = int(loaded.task.config.get("sampling_rate") or 16000)
    duration.append(len(getattr(items[0], "wave", items[0])) / rate)
    return items
