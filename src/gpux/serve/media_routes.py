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


def register(app: FastAPI) -> None:
    @app.post("/v1/audio/transcriptions", openapi_extra=schemas.multipart(schemas.TRANSCRIPTION))
    async def transcriptions(request: Request) -> Any:
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
        data = await upload.read()

        def check(loaded: Any, items: list[Any]) -> list[Any]:
            if loaded.model.bundle.manifest.task != "automatic-speech-recognition":
                raise UsageError(f"model {loaded.name} is not a speech recognition model (task: "
                                 f"{loaded.model.bundle.manifest.task})", hint="use an automatic-speech-recognition model")
            if fmt in ("srt", "vtt") and not getattr(loaded.task, "timestamps", False):
                raise UsageError(f"response_format {fmt} needs timestamps, which this model does not give",
                                 hint="use json, text or verbose_json")
            return loaded.task.items({"inputs": [data]})  # type: ignore[no-any-return]

        loaded, results, _ = await run_items(app, "openai.transcriptions", model, [data], None, check,
                                             request=request)
        answer = results[0][0]
        if fmt == "text":
            return PlainTextResponse(answer["text"] + "\n")
        if fmt == "verbose_json":
            rate = int(loaded.task.config.get("sampling_rate") or 16000)
            return FastJSON({"task": "transcribe", "language": answer.get("language"),
                             "duration": round(float(loaded.task.last_duration(data, rate)), 3) if hasattr(
                                 loaded.task, "last_duration") else None,
                             "text": answer["text"], "segments": answer.get("segments", [])})
        return FastJSON({"text": answer["text"]})
