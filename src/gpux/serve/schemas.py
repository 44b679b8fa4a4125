"""JSON schemas of the POST bodies, for the OpenAPI document only.

The routes read their bodies with orjson (:func:`gpux.serve.app.read_json`) and check them by hand:
pydantic models would validate every request a second time on the hot path. These schemas are given
to FastAPI as ``openapi_extra``, so ``/openapi.json`` declares every request body (clients, docs and
fuzzers such as schemathesis see what to send) while the request path stays as it is.
"""

from __future__ import annotations

from typing import Any

_NAME = {"type": "string", "minLength": 1, "description": "a stored model: name or name:tag"}
_KEEP_ALIVE = {"description": 'how long the model stays loaded after the request: "5m", "30s", seconds; '
                              "-1 forever, 0 unload now; at most a year",
               "oneOf": [{"type": "string", "pattern": r"^-?\d+(\.\d+)?(ms|s|m|h)?$"}, {"type": "number"}]}
_TEXTS = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required)}


MODEL_LOAD = _object({"model": _NAME, "keep_alive": _KEEP_ALIVE}, ("model",))
MODEL_UNLOAD = _object({"model": _NAME}, ("model",))
_PAIR = _object({"text": {"type": "string"}, "text_pair": {"type": "string"}}, ("text",))
_QUESTION = _object({"question": {"type": "string", "minLength": 1}, "context": {"type": "string", "minLength": 1}},
                    ("question", "context"))
_RANK = _object({"query": {"type": "string", "minLength": 1},
                 "documents": {"type": "array", "items": {"type": "string"}, "minItems": 1}}, ("query", "documents"))
PREDICT = _object({
    "inputs": {"description": "task models: text(s); {text, text_pair} pairs (text-classification, text-ranking); "
                              "{question, context} (question-answering); {query, documents} (text-ranking); "
                              "raw models: {input name: nested list}",
               "oneOf": [_TEXTS, {"type": "array", "items": {"oneOf": [{"type": "string"}, _PAIR, _QUESTION]},
                                  "minItems": 1},
                         _PAIR, _QUESTION, _RANK, {"type": "object", "additionalProperties": {}}]},
    "parameters": {"type": "object", "description": "task parameters as Hugging Face's pipelines name them: "
                                                    "top_k, targets (fill-mask); aggregation_strategy, ignore_labels "
                                                    "(token-classification); top_k, doc_stride, max_answer_len, "
                                                    "handle_impossible_answer, align_to_words (question-answering)"},
    "keep_alive": _KEEP_ALIVE}, ("inputs",))
RERANK = _object({
    "model": _NAME, "query": {"type": "string", "minLength": 1},
    "documents": {"type": "array", "minItems": 1, "items": {"oneOf": [
        {"type": "string"}, _object({"text": {"type": "string"}}, ("text",))]}},
    "top_n": {"type": "integer", "minimum": 1, "description": "answer the best n documents (default: all)"},
    "return_documents": {"type": "boolean", "default": False, "description": "include each document's text"},
    "keep_alive": _KEEP_ALIVE}, ("model", "query", "documents"))
OPENAI_EMBEDDINGS = _object({
    "model": _NAME, "input": _TEXTS, "encoding_format": {"type": "string", "enum": ["float", "base64"]},
    "dimensions": {"type": "integer", "minimum": 1}, "user": {"type": "string"}}, ("model", "input"))
OLLAMA_EMBED = _object({
    "model": _NAME, "input": _TEXTS, "truncate": {"type": "boolean", "default": True},
    "keep_alive": _KEEP_ALIVE, "options": {"type": "object"}}, ("model", "input"))
V2_INFER = _object({
    "id": {"type": "string"},
    "parameters": {"type": "object", "description": "task models: the task's parameters (top_k, ...)"},
    "inputs": {"type": "array", "minItems": 1, "items": _object({
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}},
        "datatype": {"type": "string", "enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16",
                                                "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]},
        "data": {"type": "array", "description": "the values, flattened row-major"},
        "parameters": {"type": "object"}}, ("name", "shape", "datatype", "data")),
        "description": "the graph's tensors; or, for a task model, BYTES rows named text (+ text_pair) or "
                       "question + context"},
    "outputs": {"type": "array", "items": _object({"name": {"type": "string"}, "parameters": {"type": "object"}},
                                                  ("name",))},
}, ("inputs",))

_MESSAGES = {"type": "array", "minItems": 1, "items": _object({"role": {"type": "string"},
                                                               "content": {"type": "string"}}, ("role",))}
_STOP = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]}
_SIGNALS = {"description": 'opt-in per-token signals: {"ema_alpha": 0.2} adds logprob, entropy and an EMA of '
                           "the entropy to each streamed token", "oneOf": [{"type": "boolean"}, {"type": "object"}]}
_PACE = {"type": "number", "minimum": 1, "maximum": 1000, "description": "frame-paced stream: one event per frame"}
_OPENAI_SAMPLING = {
    "model": _NAME, "stream": {"type": "boolean"}, "stream_options": _object({"include_usage": {"type": "boolean"}}),
    "max_tokens": {"type": "integer", "minimum": 1}, "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number"}, "n": {"type": "integer", "minimum": 1, "maximum": 16}, "stop": _STOP,
    "seed": {"type": "integer"}, "top_k": {"type": "integer"}, "min_p": {"type": "number"},
    "repetition_penalty": {"type": "number"}, "min_tokens": {"type": "integer"}, "signals": _SIGNALS, "pace_hz": _PACE}
OPENAI_CHAT = _object({**_OPENAI_SAMPLING, "messages": _MESSAGES, "max_completion_tokens": {"type": "integer"},
                       "logprobs": {"type": "boolean"}, "top_logprobs": {"type": "integer", "maximum": 20}},
                      ("model", "messages"))
OPENAI_COMPLETIONS = _object({**_OPENAI_SAMPLING, "prompt": {"type": "string"},
                              "logprobs": {"type": "integer", "minimum": 0, "maximum": 5}}, ("model", "prompt"))
_OLLAMA_OPTIONS = _object({k: {"type": t} for k, t in (
    ("num_predict", "integer"), ("temperature", "number"), ("top_k", "integer"), ("top_p", "number"),
    ("min_p", "number"), ("seed", "integer"), ("repeat_penalty", "number"), ("num_ctx", "integer"))} | {"stop": _STOP})
_OLLAMA = {"model": _NAME, "stream": {"type": "boolean", "default": True}, "options": _OLLAMA_OPTIONS,
           "keep_alive": _KEEP_ALIVE, "logprobs": {"type": "boolean"}, "top_logprobs": {"type": "integer"}}
OLLAMA_GENERATE = _object({**_OLLAMA, "prompt": {"type": "string", "description": "empty: load the model only"},
                           "system": {"type": "string"}, "raw": {"type": "boolean"}}, ("model",))
OLLAMA_CHAT = _object({**_OLLAMA, "messages": {**_MESSAGES, "minItems": 0}}, ("model",))
OLLAMA_SHOW = _object({"model": _NAME}, ("model",))
GENERATE = _object({"model": _NAME, "inputs": {"type": "string"}, "messages": _MESSAGES,
                    "parameters": {"type": "object", "description": "Hugging Face generation parameters: "
                                   "max_new_tokens, do_sample, temperature, top_k, top_p, min_p, repetition_penalty, "
                                   "seed, stop, stop_token_ids, logprobs, top_logprobs, min_new_tokens"},
                    "stream": {"type": "boolean", "default": True}, "n": {"type": "integer"}, "truncate":
                    {"type": "boolean"}, "signals": _SIGNALS, "pace_hz": _PACE, "keep_alive": _KEEP_ALIVE}, ("model",))
ENSEMBLE = _object({"models": {"type": "array", "items": _NAME, "minItems": 2, "maxItems": 8},
                    "inputs": {"type": "string"}, "messages": _MESSAGES, "parameters": {"type": "object"},
                    "stream": {"type": "boolean", "default": True}, "keep_alive": _KEEP_ALIVE}, ("models",))
KSERVE_GENERATE = _object({"text_input": {"type": "string", "minLength": 1},
                           "parameters": {"type": "object", "description": "max_tokens, temperature, top_p, ..."}},
                          ("text_input",))

TRANSCRIPTION = _object({"file": {"type": "string", "format": "binary", "description": "the audio, uploaded"},
                         "model": _NAME, "response_format": {"type": "string", "enum": ["json", "text", "verbose_json",
                                                                                        "srt", "vtt"]},
                         "language": {"type": "string"}}, ("file", "model"))


def multipart(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a multipart/form-data route (an upload)."""
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def body(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose JSON body follows ``schema`` (documented, not validated here)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
