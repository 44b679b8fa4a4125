"""CTranslate2 Whisper folders (faster-whisper's layout) as model sources: rebuilt once as a transformers folder.

A CTranslate2 model folder holds ``model.bin`` (every weight, named), a
``config.json`` with decoding hints (``suppress_ids``, ``lang_ids``,
``alignment_heads``) and the tokenizer. gpux converts Hugging Face folders, so
the weights are read here (numpy only, no ``ctranslate2`` package), renamed to
``WhisperForConditionalGeneration``'s state dict names (the inverse of
CTranslate2's ``WhisperLoader``: fused q/k/v split back, the key projection
that has no bias left without one), dequantised to fp32 and written with a
config inferred from the tensor shapes.

``model.bin`` (CTranslate2's ``ModelSpec._serialize``, little-endian)::

    u32 binary_version                      1..6 accepted
    str spec_name, u32 spec_revision         from version 2 ("WhisperSpec", 3)
    u32 n_variables
      n × { str name, u8 rank, u32 dims[rank],
            u8 dtype_id, u32 n_bytes,        from version 4 (before: u8 item_size, u32 n_items)
            bytes[n_bytes] }
    u32 n_aliases                            from version 3
      n × { str alias, str target }
    str = u16 length-including-NUL, bytes, NUL

dtype ids: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16.

The rebuilt folder lives at ``$GPUX_HOME/sources/ct2-<16 hex>/``, keyed by the
sha256 of ``model.bin`` and ``config.json``; it is built in scratch under
``$GPUX_HOME/tmp`` and renamed into place, so a killed pull leaves no half
folder and a second call reuses the finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gpux.errors import ConvertError, RegistryError
from gpux.registry.ct2_format import (_DAMAGED_HINT, MAX_BINARY_VERSION, CT2Metadata, _header,  # noqa: F401
                                      is_ct2_model,
                                      is_ct2_whisper, read_ct2)

if TYPE_CHECKING:
    from gpux.registry import Located

#: What a finished folder holds; the record is written last.
RECORD = "ct2_source.json"
_NEEDED = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
           "tokenizer_config.json", "preprocessor_config.json", RECORD)
_EXTRA_HINT = "pip install 'gpux[convert]'"


# ---------------------------------------------------------------------------------------------- mapping

#: CTranslate2's Activation enum (specs/common_spec.py) -> transformers' activation_function.
_ACTIVATIONS = {0: "relu", 1: "gelu_new", 2: "silu", 3: "gelu", 5: "tanh"}
#: Scalars the mapping reads or checks; anything else that is not a tensor it knows is an error.
_SCALARS = {"encoder/num_heads", "decoder/num_heads", "decoder/activation", "decoder/alibi", "decoder/pre_norm",
            "decoder/scale_embeddings", "decoder/start_from_zero_embedding", "decoder/alignment_heads",
            "decoder/alignment_layer", "decoder/alibi_use_positive_positions", "decoder/scale_alibi",
            "decoder/multi_query_attention"}


def _fp32(variables: dict[str, np.ndarray], name: str) -> np.ndarray:
    """``name`` as float32, dequantised with its ``_scale`` when CTranslate2 stored it as int8/int16."""
    value = variables[name]
    if name + "_zero" in variables:
        raise ConvertError(f"{name} is stored with a zero point (an AWQ/GPTQ-quantised model)",
                           hint="convert the original Hugging Face Whisper folder instead")
    scale = variables.get(name + "_scale")
    if scale is not None:  # ModelSpec._quantize: int8 = rint(w * 127 / amax(|row|)); int16: one scale
        scale = scale.astype(np.float32)
        if scale.ndim == 1 and value.ndim >= 2 and scale.shape[0] == value.shape[0]:
            scale = scale.reshape((-1,) + (1,) * (value.ndim - 1))  # one per output row (conv: over in × k)
        elif scale.ndim and scale.ndim == value.ndim - 1:  # CTranslate2 < 4.5 reduced a conv over axis 1 only
            scale = np.expand_dims(scale, 1)
        try:
            return (value.astype(np.float32) / scale).astype(np.float32)
        except ValueError as exc:
            raise ConvertError(f"{name} of shape {value.shape} has a scale of shape {scale.shape}",
                               hint="the model.bin may come from a newer CTranslate2 than gpux reads") from exc
    if value.dtype.kind not in "f":
        raise ConvertError(f"{name} is stored as {value.dtype} without a scale to dequantise it",
                           hint="the model.bin may come from a newer CTranslate2 than gpux reads")
    return np.ascontiguousarray(value, dtype=np.float32)


def _scalar(variables: dict[str, np.ndarray], name: str, default: int | None = None) -> int | None:
    value = variables.get(name)
    return default if value is None else int(np.asarray(value).reshape(-1)[0])


def _layers(variables: dict[str, np.ndarray], prefix: str) -> int:
    n = 0
    while any(k.startswith(f"{prefix}/layer_{n}/") for k in variables):
        n += 1
    return n


def whisper_state_dict(variables: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """CTranslate2 Whisper variables -> (WhisperForConditionalGeneration state dict in fp32, shape facts).

    The inverse of CTranslate2's ``WhisperLoader``: ``self_attention/linear_0``
    is q, k and v stacked on the output axis (k's bias is the zeros the
    converter filled in; transformers' k projections have none), the decoder's
    cross ``attention/linear_0`` is q and ``linear_1`` k and v stacked. Raises
    :class:`ConvertError` for a tensor it does not know or a layout it cannot
    represent.
    """
    used: set[str] = set()
    sd: dict[str, np.ndarray] = {}

    def take(name: str) -> np.ndarray:
        if name not in variables:
            raise ConvertError(f"model.bin has no {name!r}", hint="this is not a Whisper model CTranslate2 wrote")
        used.update({name, name + "_scale"})
        return _fp32(variables, name)

    def linear(ct2: str, hf: str, bias: bool = True) -> None:
        sd[f"{hf}.weight"] = take(f"{ct2}/weight")
        if bias:
            sd[f"{hf}.bias"] = take(f"{ct2}/bias")

    def norm(ct2: str, hf: str) -> None:
        sd[f"{hf}.weight"] = take(f"{ct2}/gamma")
        sd[f"{hf}.bias"] = take(f"{ct2}/beta")

    def fused(ct2: str, hfs: list[str], bias_less: str) -> None:
        weight, bias = take(f"{ct2}/weight"), take(f"{ct2}/bias")
        if weight.shape[0] % len(hfs) or bias.shape[0] != weight.shape[0]:
            raise ConvertError(f"{ct2} has shape {weight.shape}, not {len(hfs)} stacked projections",
                               hint="this is not a Whisper model CTranslate2 wrote")
        for hf, w, b in zip(hfs, np.split(weight, len(hfs)), np.split(bias, len(hfs))):
            sd[f"{hf}.weight"] = np.ascontiguousarray(w)
            if hf == bias_less:
                if np.any(b != 0):
                    raise ConvertError(f"{ct2} has a non-zero key bias, which Whisper has no place for",
                                       hint="this is not a Whisper model CTranslate2 wrote")
            else:
                sd[f"{hf}.bias"] = np.ascontiguousarray(b)

    for hf, ct2 in (("conv1", "conv1"), ("conv2", "conv2")):
        linear(f"encoder/{ct2}", f"model.encoder.{hf}")
    sd["model.encoder.embed_positions.weight"] = take("encoder/position_encodings/encodings")
    norm("encoder/layer_norm", "model.encoder.layer_norm")
    enc_layers, dec_layers = _layers(variables, "encoder"), _layers(variables, "decoder")
    for i in range(enc_layers):
        c, h = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        fused(f"{c}/self_attention/linear_0", [f"{h}.self_attn.{p}_proj" for p in "qkv"], f"{h}.self_attn.k_proj")
        linear(f"{c}/self_attention/linear_1", f"{h}.self_attn.out_proj")
        norm(f"{c}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
        linear(f"{c}/ffn/linear_0", f"{h}.fc1")
        linear(f"{c}/ffn/linear_1", f"{h}.fc2")
        norm(f"{c}/ffn/layer_norm", f"{h}.final_layer_norm")
    sd["model.decoder.embed_tokens.weight"] = take("decoder/embeddings/weight")
    sd["model.decoder.embed_positions.weight"] = take("decoder/position_encodings/encodings")
    norm("decoder/layer_norm", "model.decoder.layer_norm")
    for i in range(dec_layers):
        c, h = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        fused(f"{c}/self_attention/linear_0", [f"{h}.self_attn.{p}_proj" for p in "qkv"], f"{h}.self_attn.k_proj")
        linear(f"{c}/self_attention/linear_1", f"{h}.self_attn.out_proj")
        norm(f"{c}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
        linear(f"{c}/attention/linear_0", f"{h}.encoder_attn.q_proj")
        fused(f"{c}/attention/linear_1", [f"{h}.encoder_attn.{p}_proj" for p in "kv"], f"{h}.encoder_attn.k_proj")
        linear(f"{c}/attention/linear_2", f"{h}.encoder_attn.out_proj")
        norm(f"{c}/attention/layer_norm", f"{h}.encoder_attn_layer_norm")
        linear(f"{c}/ffn/linear_0", f"{h}.fc1")
        linear(f"{c}/ffn/linear_1", f"{h}.fc2")
        norm(f"{c}/ffn/layer_norm", f"{h}.final_layer_norm")
    projection = take("decoder/projection/weight")
    tied = bool(np.array_equal(projection, sd["model.decoder.embed_tokens.weight"]))
    if not tied:
        sd["proj_out.weight"] = projection
    if "decoder/projection/bias" in variables:
        if np.any(_fp32(variables, "decoder/projection/bias") != 0):
            raise ConvertError("model.bin has an output projection bias, which Whisper has no place for",
                               hint="this is not a Whisper model CTranslate2 wrote")
        used.add("decoder/projection/bias")

    unknown = sorted(k for k in variables if k not in used and k not in _SCALARS)
    if unknown:
        raise ConvertError(f"model.bin holds {len(unknown)} variable(s) a Whisper model has no place for: "
                           f"{', '.join(unknown[:5])}", hint="this is not a Whisper model gpux can map")
    activation = _scalar(variables, "decoder/activation", 3)
    if activation not in _ACTIVATIONS:
        raise ConvertError(f"model.bin uses activation id {activation}, which transformers' Whisper cannot run",
                           hint="only relu, gelu, gelu_new, silu and tanh map to WhisperConfig.activation_function")
    for name, want in (("decoder/pre_norm", 1), ("decoder/alibi", 0), ("decoder/scale_embeddings", 0)):
        got = _scalar(variables, name, want)
        if name == "decoder/scale_embeddings" and got is not None and variables[name].dtype.kind == "f":
            got = 0 if float(variables[name]) in (0.0, 1.0) else 1
        if got != want:
            raise ConvertError(f"model.bin sets {name} = {got}; Whisper needs {want}",
                               hint="this is not a Whisper model gpux can map")
    d_model = sd["model.encoder.conv1.weight"].shape[0]
    facts = {
        "d_model": int(d_model),
        "num_mel_bins": int(sd["model.encoder.conv1.weight"].shape[1]),
        "encoder_layers": enc_layers,
        "decoder_layers": dec_layers,
        "encoder_attention_heads": _scalar(variables, "encoder/num_heads", d_model // 64),
        "decoder_attention_heads": _scalar(variables, "decoder/num_heads", d_model // 64),
        "encoder_ffn_dim": int(sd["model.encoder.layers.0.fc1.weight"].shape[0]) if enc_layers else 4 * d_model,
        "decoder_ffn_dim": int(sd["model.decoder.layers.0.fc1.weight"].shape[0]) if dec_layers else 4 * d_model,
        "max_source_positions": int(sd["model.encoder.embed_positions.weight"].shape[0]),
        "max_target_positions": int(sd["model.decoder.embed_positions.weight"].shape[0]),
        "vocab_size": int(sd["model.decoder.embed_tokens.weight"].shape[0]),
        "activation_function": _ACTIVATIONS[int(activation)],
        "tie_word_embeddings": tied,
    }
    return sd, facts


# ---------------------------------------------------------------------------------------------- the folder

_SPECIALS = ("<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>",
             "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>")


def _token_ids(tokenizer: dict[str, Any]) -> dict[str, int]:
    ids = {str(t["content"]): int(t["id"]) for t in tokenizer.get("added_tokens", [])}
    vocab = tokenizer.get("model", {}).get("vocab", {})
    for tok in _SPECIALS:
        if tok not in ids and tok in vocab:
            ids[tok] = int(vocab[tok])
    return ids


def _with_timestamps(tokenizer: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """tokenizer.json with Whisper's timestamp tokens ``<|0.00|>``… added up to the model's vocab size.

    CTranslate2 copies the tokenizer as the checkpoint had it; older ones stop
    at ``<|notimestamps|>`` and decode timestamp ids to nothing. transformers'
    own Whisper tokenizers carry them as (non-special) added tokens.
    """
    added = list(tokenizer.get("added_tokens", []))
    known = {int(t["id"]) for t in added} | {int(i) for i in tokenizer.get("model", {}).get("vocab", {}).values()}
    ids = _token_ids(tokenizer)
    first = ids.get("<|notimestamps|>")
    if first is None:
        return tokenizer
    start = first + 1
    for i in range(start, vocab_size):
        if i not in known:
            added.append({"id": i, "content": "<|%.2f|>" % ((i - start) * 0.02), "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": False, "special": False})
    return {**tokenizer, "added_tokens": added}


def _configs(facts: dict[str, Any], ct2_config: dict[str, Any], ids: dict[str, int]
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config.json, generation_config.json) for transformers, laid out as the openai/whisper-* repos have them."""
    missing = [t for t in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>") if t not in ids]
    if missing:
        raise RegistryError(f"tokenizer.json has no {', '.join(missing)}: it is not Whisper's tokenizer",
                            hint="copy tokenizer.json from the matching openai/whisper-* repository")
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    multilingual = facts["vocab_size"] >= 51865  # transformers' own test (WhisperTokenizer, generate)
    suppress = [int(i) for i in ct2_config.get("suppress_ids") or []]
    begin = [int(i) for i in ct2_config.get("suppress_ids_begin") or [220, eot]]  # 220: "Ġ", a lone space
    config = {
        "architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper",
        **{k: v for k, v in facts.items()},
        "num_hidden_layers": facts["encoder_layers"],
        "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot, "decoder_start_token_id": sot,
        "suppress_tokens": suppress, "begin_suppress_tokens": begin,
        "scale_embedding": False, "is_encoder_decoder": True, "use_cache": True,
        "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0, "init_std": 0.02,
        "apply_spec_augment": False, "use_weighted_layer_sum": False, "classifier_proj_size": 256,
        "median_filter_width": 7, "dtype": "float32",
    }
    generation = {
        "bos_token_id": sot, "decoder_start_token_id": sot, "eos_token_id": eot, "pad_token_id": eot,
        "suppress_tokens": suppress, "begin_suppress_tokens": begin,
        "no_timestamps_token_id": ids["<|notimestamps|>"], "max_initial_timestamp_index": 50,
        "max_length": facts["max_target_positions"], "return_timestamps": False,
        "is_multilingual": multilingual,
    }
    if "<|startofprev|>" in ids:
        generation["prev_sot_token_id"] = ids["<|startofprev|>"]
    heads = ct2_config.get("alignment_heads")
    if heads:
        generation["alignment_heads"] = [[int(a), int(b)] for a, b in heads]
    if multilingual:
        by_id = {i: t for t, i in ids.items()}
        langs = {by_id[int(i)]: int(i) for i in ct2_config.get("lang_ids") or [] if int(i) in by_id}
        if langs:
            generation["lang_to_id"] = langs
        generation["task_to_id"] = {t: ids[f"<|{t}|>"] for t in ("transcribe", "translate") if f"<|{t}|>" in ids}
    return config, generation


def _tokenizer_config(ids: dict[str, int]) -> dict[str, Any]:
    specials = [t for t in ids if t.startswith("<|") and t.endswith("|>") and not _is_timestamp(t)]
    return {
        "tokenizer_class": "WhisperTokenizer", "processor_class": "WhisperProcessor",
        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "add_prefix_space": False, "add_bos_token": False, "errors": "replace",
        "clean_up_tokenization_spaces": False, "model_max_length": 1024, "return_attention_mask": False,
        "predict_timestamps": False, "language": None, "task": None,
        "additional_special_tokens": [t for t in specials if t != "<|endoftext|>"],
    }


def _is_timestamp(token: str) -> bool:
    body = token[2:-2]
    return body.replace(".", "", 1).isdigit()


def _preprocessor_config(folder: Path, n_mels: int) -> dict[str, Any]:
    """The folder's preprocessor_config.json (large-v3 folders have one) over WhisperFeatureExtractor's defaults."""
    cfg: dict[str, Any] = {}
    path = folder / "preprocessor_config.json"
    if path.is_file():
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise RegistryError(f"{path} is not valid JSON ({exc})", hint=_DAMAGED_HINT) from exc
    if int(cfg.get("feature_size", n_mels)) != n_mels:
        raise RegistryError(f"{path} says feature_size {cfg['feature_size']} but the weights take {n_mels} mel bins",
                            hint="the folder mixes files of two Whisper models")
    cfg.pop("mel_filters", None)  # old transformers saved the filter bank; WhisperFeatureExtractor recomputes it
    defaults = {"feature_extractor_type": "WhisperFeatureExtractor", "processor_class": "WhisperProcessor",
                "feature_size": n_mels, "sampling_rate": 16000, "hop_length": 160, "chunk_length": 30,
                "n_fft": 400, "n_samples": 480000, "nb_max_frames": 3000, "padding_side": "right",
                "padding_value": 0.0, "return_attention_mask": False}
    return {**defaults, **cfg}


#: Files of a CTranslate2 Whisper folder the rebuilt folder depends on (hashed into its key).
_INPUTS = ("model.bin", "config.json", "tokenizer.json", "preprocessor_config.json")
#: Bumped when the mapping changes, so folders built by an older gpux are rebuilt.
_LAYOUT = 1


def content_key(folder: Path) -> str:
    """sha256 over the input files' names and bytes and the mapping's version: what the rebuilt folder depends on."""
    h = hashlib.sha256(f"gpux-ct2-whisper/{_LAYOUT}\n".encode())
    for name in _INPUTS:
        path = Path(folder) / name
        if not path.is_file():
            continue
        h.update(f"{name}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def write_folder(ct2_folder: Path, out: Path) -> dict[str, Any]:
    """Write the transformers folder of ``ct2_folder`` into ``out`` (not atomic: see :func:`to_transformers`).

    Returns the record also written as ``ct2_source.json`` (minus sha256).
    """
    ct2_folder = Path(ct2_folder)
    try:
        from safetensors.numpy import save_file
    except ImportError as exc:
        raise ConvertError("writing a CTranslate2 model as safetensors needs the safetensors package "
                           "(part of the convert extra)", hint=_EXTRA_HINT) from exc
    variables, meta = read_ct2(ct2_folder / "model.bin")
    if meta.spec != "WhisperSpec":
        raise RegistryError(f"{ct2_folder} is a CTranslate2 {meta.spec or 'model'}, not Whisper",
                            hint="gpux reads CTranslate2 Whisper models (faster-whisper's) only")
    try:
        ct2_config = json.loads((ct2_folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{ct2_folder / 'config.json'} cannot be read ({exc})", hint=_DAMAGED_HINT) from exc
    tok_path = ct2_folder / "tokenizer.json"
    if not tok_path.is_file():
        raise RegistryError(f"{ct2_folder} has no tokenizer.json (CTranslate2 keeps only a vocabulary, "
                            "which lacks the BPE merges)",
                            hint="copy tokenizer.json from the matching openai/whisper-* repository into the folder")
    try:
        tokenizer = json.loads(tok_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{tok_path} is not valid JSON ({exc})", hint=_DAMAGED_HINT) from exc

    sd, facts = whisper_state_dict(variables)
    ids = _token_ids(tokenizer)
    config, generation = _configs(facts, ct2_config, ids)
    tokenizer = _with_timestamps(tokenizer, facts["vocab_size"])
    out.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    _dump(out / "config.json", config)
    _dump(out / "generation_config.json", generation)
    _dump(out / "tokenizer.json", tokenizer)
    _dump(out / "tokenizer_config.json", _tokenizer_config(ids))
    _dump(out / "preprocessor_config.json", _preprocessor_config(ct2_folder, facts["num_mel_bins"]))
    quant = sorted({meta.dtypes[k] for k in variables if not k.endswith("_scale") and variables[k].ndim >= 2})
    return {"format": "ctranslate2", **meta.to_dict(), "stored_dtypes": quant, "layout": _LAYOUT,
            "parameters": int(sum(v.size for v in sd.values()))}


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _complete(folder: Path, key: str) -> bool:
    if not all((folder / n).is_file() for n in _NEEDED):
        return False
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("sha256") == key


def sources_root(store_root: Path | None = None) -> Path:
    """Where CTranslate2-derived folders live: ``<store root>/sources``."""
    from gpux.store.local import home

    return (store_root if store_root is not None else home()) / "sources"


def folder_for(key: str, store_root: Path | None = None) -> Path:
    """The content-addressed folder of the CTranslate2 model whose :func:`content_key` is ``key``."""
    return sources_root(store_root) / f"ct2-{key[:16]}"


def cached_folder(key: str, store_root: Path | None = None) -> Path | None:
    """The finished folder built from the content ``key`` (a source record's sha256), or None (never built, damaged)."""
    folder = folder_for(key, store_root)
    return folder if _complete(folder, key) else None


def _check_source(folder: Path) -> None:
    if not folder.is_dir():
        raise RegistryError(f"{folder} is not a folder", hint="point at the CTranslate2 model folder "
                            "(the one holding model.bin and config.json)")
    if not (folder / "model.bin").is_file() or not (folder / "config.json").is_file():
        raise RegistryError(f"{folder} is not a CTranslate2 model folder (it needs model.bin and config.json)",
                            hint="point at the folder faster-whisper loads (model.bin, config.json, tokenizer.json)")
    header = _header(folder / "model.bin")
    size = (folder / "model.bin").stat().st_size
    if header is None and size < 4 + 2 + 256 + 4:
        with open(folder / "model.bin", "rb") as fh:
            head = fh.read(4)
        if len(head) == 4 and 1 <= struct.unpack("<I", head)[0] <= MAX_BINARY_VERSION:
            raise RegistryError(f"{folder / 'model.bin'} ends early: {size} bytes, less than its header",
                                hint=_DAMAGED_HINT)
    if header is None:
        raise RegistryError(f"{folder / 'model.bin'} is not in CTranslate2's binary format "
                            f"(no binary version 1..{MAX_BINARY_VERSION} and spec name at its start)",
                            hint="check the file: it may be a PyTorch pytorch_model.bin, or damaged")
    if header[1] != "WhisperSpec":
        raise RegistryError(f"{folder} is a CTranslate2 {header[1] or 'model'}, not Whisper",
                            hint="gpux reads CTranslate2 Whisper models (faster-whisper's) only")


def to_transformers(ct2_folder: Path, out_folder: Path | None = None, store_root: Path | None = None) -> Path:
    """The transformers Whisper folder rebuilt from the CTranslate2 folder ``ct2_folder``; returns its path.

    ``out_folder`` defaults to ``$GPUX_HOME/sources/ct2-<16 hex of the content key>``.
    The folder is built in scratch beside its destination and renamed into
    place; a complete folder made from the same content is reused as is. An
    ``out_folder`` that exists with other content is replaced only if it is
    empty or was built by this function. Raises :class:`RegistryError` for a
    folder that is not CTranslate2 Whisper or a damaged file,
    :class:`ConvertError` for a layout transformers' Whisper cannot hold.
    """
    from gpux.store.local import Store

    src = Path(ct2_folder).expanduser().resolve()
    _check_source(src)
    key = content_key(src)
    if out_folder is None:
        store = Store(store_root)
        with store.lock(f"ct2-{key[:16]}"):  # a second pull of the same model waits, then reuses the folder
            final = folder_for(key, store.root)
            if cached_folder(key, store.root) is None:
                _build(src, key, final, store.scratch("ct2"))
        return final
    final = Path(out_folder).expanduser().resolve()
    if _complete(final, key):
        return final
    if final.exists() and (not final.is_dir() or (any(final.iterdir()) and not (final / RECORD).is_file())):
        raise RegistryError(f"{final} exists and was not built from a CTranslate2 model; gpux will not replace it",
                            hint="choose an empty or new output folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    import tempfile

    _build(src, key, final, Path(tempfile.mkdtemp(prefix=f".{final.name}-ct2-", dir=final.parent)))
    return final


def _build(src: Path, key: str, final: Path, scratch: Path) -> None:
    """Write into ``scratch``, record last, rename over ``final``; the scratch is gone whatever happens."""
    try:
        record = write_folder(src, scratch)
        _dump(scratch / RECORD, {"path": str(src), "sha256": key, **record, **_versions()})
        scratch.chmod(0o755)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # incomplete, stale or damaged
            shutil.rmtree(final)
        os.rename(scratch, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("gpux", "safetensors"):
        with contextlib.suppress(PackageNotFoundError):
            out[f"{pkg}_version"] = version(pkg)
    return out


def same_source(stored: dict[str, Any], record: dict[str, Any]) -> bool:
    """Whether a stored source record is the same CTranslate2 content as ``record`` (wherever it lies now)."""
    return stored.get("kind") == record.get("kind") == "ct2" and stored.get("sha256") == record.get("sha256")


def locate(folder: Path, store_root: Path | None = None) -> Located:
    """The registry's entry: the transformers folder made from the CTranslate2 Whisper ``folder``.

    Reused when built before (same content), else built now under
    ``$GPUX_HOME/sources``. The store name is the folder's name (its parent's
    when the folder is called just ``model``, as in model packages).
    """
    from gpux.registry import Located
    from gpux.registry.local import sanitize

    src = Path(folder).expanduser().resolve()
    out = to_transformers(src, store_root=store_root)
    record = json.loads((out / RECORD).read_text(encoding="utf-8"))
    name = src.name if src.name.lower() not in ("model", "models", "ct2", "") else src.parent.name
    source = {"kind": "ct2", "path": str(src), "sha256": record["sha256"], "spec": record.get("spec"),
              "revision": record.get("revision"), "stored_dtypes": record.get("stored_dtypes")}
    return Located(sanitize(name), out, source)
