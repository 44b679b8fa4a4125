"""Folder -> task -> export -> parity -> bundle (graph, tokenizer, task config) -> store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from gpux.convert.detect import CROSS_ENCODER_KEYS, check_task, detect_task, num_labels, read_json, refuse_remote_code
from gpux.errors import ConvertError
from gpux.store.blobs import disk_full, no_space
from gpux.store.bundle import Bundle, Manifest
from gpux.store.local import Store

SUPPORTED_TASKS = ("feature-extraction", "text-classification", "text-ranking", "token-classification",
                   "question-answering", "fill-mask", "text-generation", "text2text-generation", "image-to-text", "image-classification",
                   "audio-classification", "automatic-speech-recognition", "image-feature-extraction",
                   "audio-feature-extraction", "zero-shot-image-classification", "zero-shot-audio-classification",
                   "zero-shot-video-classification")
#: Tasks of image and audio models (convert/media.py); their embeddings are "<modality>-feature-extraction".
MEDIA_TASKS = ("image-classification", "audio-classification", "automatic-speech-recognition",
               "image-feature-extraction", "audio-feature-extraction", "zero-shot-image-classification",
               "zero-shot-audio-classification", "zero-shot-video-classification")
#: Tasks whose outputs are scores over config.id2label.
LABELLED_TASKS = ("text-classification", "token-classification", "text-ranking")
#: Activation class name (last dotted part, lower-cased) in a CrossEncoder config -> task.json activation.
ACTIVATIONS = {"sigmoid": "sigmoid", "identity": "identity", "softmax": "softmax"}
TASK_CONFIG = "task.json"


def _max_length(folder: Path, config: dict[str, Any], offset: int) -> int:
    """Longest input the model takes: sentence-transformers' limit, the tokenizer's, the positions'."""
    limits = []
    if (folder / "sentence_bert_config.json").is_file():
        limits.append(read_json(folder / "sentence_bert_config.json").get("max_seq_length"))
    if (folder / "tokenizer_config.json").is_file():
        limits.append(read_json(folder / "tokenizer_config.json").get("model_max_length"))
    if config.get("max_position_embeddings"):
        limits.append(int(config["max_position_embeddings"]) - offset)
    sane = [int(x) for x in limits if isinstance(x, (int, float)) and 0 < x < 1_000_000]
    return min(sane) if sane else 512


def _pooling(folder: Path) -> dict[str, Any]:
    """Pooling and normalisation as sentence-transformers' modules.json describes them (mean otherwise)."""
    mode, normalize = "mean", False
    if (folder / "modules.json").is_file():
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        for mod in modules:
            kind = str(mod.get("type", ""))
            if kind.endswith("Pooling"):
                cfg = read_json(folder / mod.get("path", "1_Pooling") / "config.json")
                modes = [m for m in ("cls_token", "mean_tokens", "max_tokens") if cfg.get(f"pooling_mode_{m}")]
                if len(modes) != 1:
                    raise ConvertError(f"pooling modes {modes or 'none'} are not supported",
                                       hint="gpux supports exactly one of cls, mean or max pooling")
                mode = {"cls_token": "cls", "mean_tokens": "mean", "max_tokens": "max"}[modes[0]]
            elif kind.endswith("Normalize"):
                normalize = True
    return {"pooling": mode, "normalize": normalize}


def _tokenizer_facts(folder: Path, task: str) -> dict[str, Any]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    if not getattr(tok, "is_fast", False) or not (folder / "tokenizer.json").is_file():
        raise ConvertError("the model has no tokenizer.json (a fast tokenizer)",
                           hint="gpux tokenizes with the `tokenizers` library, which needs tokenizer.json")
    facts = {"pad_token": tok.pad_token, "pad_id": tok.pad_token_id if tok.pad_token_id is not None else 0}
    if task == "fill-mask":
        if tok.mask_token is None or tok.mask_token_id is None:
            raise ConvertError("the tokenizer has no mask token, which fill-mask needs",
                               hint="pass --task feature-extraction for embeddings from this model")
        facts.update(mask_token=str(tok.mask_token), mask_id=int(tok.mask_token_id))
    return facts


def _activation(config: dict[str, Any]) -> str:
    """The score function of a cross-encoder: what sentence-transformers' CrossEncoder config says, else its
    default (sigmoid for one logit, identity for several)."""
    st = config.get("sentence_transformers")
    named = (st.get("activation_fn") if isinstance(st, dict) else None) or config.get(CROSS_ENCODER_KEYS[1])
    if named:
        key = str(named).rsplit(".", 1)[-1].lower()
        if key not in ACTIVATIONS:
            raise ConvertError(f"the cross-encoder's activation {named!r} is not one gpux applies",
                               hint=f"gpux applies: {', '.join(ACTIVATIONS)}")
        return ACTIVATIONS[key]
    return "sigmoid" if num_labels(config) == 1 else "identity"


def _task_facts(folder: Path, task: str, config: dict[str, Any]) -> dict[str, Any]:
    """The per-task fields of task.json: pooling, labels in id order, the ranking activation."""
    if task == "feature-extraction":
        return _pooling(folder)
    facts: dict[str, Any] = {}
    if task in LABELLED_TASKS:
        id2label = config.get("id2label") or {}
        facts["labels"] = [str(id2label.get(str(i), f"LABEL_{i}")) for i in range(num_labels(config))]
    if task == "text-ranking":
        facts["activation"] = _activation(config)
    return facts


def convert(folder: Path, *, name: str, source: dict[str, Any], task: str | None = None,
            allow_pickle: bool = False, store: Store | None = None) -> Bundle:
    """Convert the HF-layout ``folder`` and publish it as ``name:task`` in the store."""
    from gpux.convert.export import OPSET, export

    refuse_remote_code(folder)
    if task is not None and task not in SUPPORTED_TASKS:
        raise ConvertError(f"task {task!r} is not supported", hint=f"supported tasks: {', '.join(SUPPORTED_TASKS)}")
    if task is not None:
        check_task(folder, task)
    from gpux.convert.media import media_input
    from gpux.convert.seq2seq_bundle import SEQ2SEQ_TASKS, convert_seq2seq, is_seq2seq_folder

    if (folder / "config.json").is_file() and is_seq2seq_folder(folder) and task in (None, *SEQ2SEQ_TASKS):
        return convert_seq2seq(folder, name=name, source=source, task=task or detect_task(folder, SUPPORTED_TASKS),
                               allow_pickle=allow_pickle, store=store or Store())
    media = media_input(folder) if (folder / "config.json").is_file() else None
    if media is not None and task in (None, "feature-extraction", "text-classification"):
        task = task or detect_task(folder, SUPPORTED_TASKS)
        kind = "image" if media == "pixel_values" else "audio"
        if task == "feature-extraction":  # a backbone's embeddings, by what it takes
            task = f"{kind}-feature-extraction"
        elif task == "text-classification":  # …ForSequenceClassification of an audio model (wav2vec2, HuBERT)
            task = f"{kind}-classification"
    task = task or detect_task(folder, SUPPORTED_TASKS)
    if (media is None) != (task not in MEDIA_TASKS):
        raise ConvertError(f"task {task} does not fit this model: it takes "
                           f"{media or 'text (input_ids)'}", hint="leave --task out to detect it")
    store = store or Store()
    if task == "zero-shot-video-classification":
        return _convert_video(folder, name=name, source=source, allow_pickle=allow_pickle, store=store)
    if task.startswith("zero-shot-"):
        return _convert_dual(folder, name=name, source=source, task=task, allow_pickle=allow_pickle, store=store)
    if media is not None:
        return _convert_media(folder, name=name, source=source, task=task, allow_pickle=allow_pickle, store=store)
    config = read_json(folder / "config.json")
    tok = _tokenizer_facts(folder, task)
    work = store.scratch("convert-")
    try:
        if task == "text-generation":
            return _convert_decoder(folder, name=name, source=source, config=config, tok=tok, work=Path(work),
                                    allow_pickle=allow_pickle, store=store)
        exported = export(folder, task, Path(work) / "model.onnx", allow_pickle=allow_pickle)
        arch = exported.architecture
        task_cfg: dict[str, Any] = {
            "task": task, "max_length": _max_length(folder, config, arch.position_offset),
            "inputs": list(arch.inputs), "output": exported.output,
            **({"outputs": list(exported.outputs)} if len(exported.outputs) > 1 else {}), **tok,
            "model_type": arch.model_type, "ort_model_type": arch.ort_model_type,
            "ort_model_type_source": arch.ort_model_type_source, "position_offset": arch.position_offset,
            # The transformer optimizer cannot infer these from our graphs; without them no Attention fusion.
            "num_heads": int(config.get("num_attention_heads") or config.get("n_heads") or 0),
            "hidden_size": int(config.get("hidden_size") or config.get("dim") or 0),
            **_task_facts(folder, task, config),
        }
        (Path(work) / TASK_CONFIG).write_text(json.dumps(task_cfg, indent=2))
        manifest = Manifest(
            name=name, tag=task, task=task, graphs={"model": "model.onnx"},
            assets={"tokenizer": "tokenizer.json", "task_config": TASK_CONFIG},
            source=source,
            conversion={"exporter": exported.exporter, "rejected_exporters": exported.rejected, "opset": OPSET,
                        "dtype": "float32", "seconds": round(exported.seconds, 3), "parity": exported.parity,
                        **exported.versions},
        )
        files = {"model.onnx": exported.path, "tokenizer.json": folder / "tokenizer.json",
                 TASK_CONFIG: Path(work) / TASK_CONFIG}
        return store.publish(manifest, files, move=frozenset({"model.onnx", TASK_CONFIG}))
    except OSError as exc:  # the scratch files: a full disk reads as one, naming where
        if no_space(exc) is None:
            raise
        raise disk_full(store.root, exc, f"the conversion of {name}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _convert_media(folder: Path, *, name: str, source: dict[str, Any], task: str, allow_pickle: bool,
                   store: Store) -> Bundle:
    """An image or audio model (convert/media.py): graph, its processor config and task facts."""
    from gpux.convert.media import export_media

    work = store.scratch("convert-")
    try:
        head_task = "feature-extraction" if task.endswith("feature-extraction") else task
        done = export_media(folder, head_task, Path(work) / "model.onnx", allow_pickle=allow_pickle)
        config, processor = done.pop("model").config, done.pop("processor")
        task_cfg: dict[str, Any] = {"task": task, "input": done["input"], "inputs": done["inputs"],
                                    "output": "output", "model_type": config.model_type}
        labels = getattr(config, "id2label", None) or {}
        if task in ("image-classification", "audio-classification"):
            task_cfg["labels"] = [labels[i] for i in sorted(labels)]
        if done["input"] == "pixel_values":
            from gpux.convert.media import image_size

            task_cfg["image_size"] = list(image_size(processor, config))
        else:
            task_cfg["sampling_rate"] = int(processor.get("sampling_rate") or 16000)
        if task == "automatic-speech-recognition":
            task_cfg["ctc"] = _ctc_vocabulary(folder, config)
        (Path(work) / TASK_CONFIG).write_text(json.dumps(task_cfg, indent=2))
        manifest = Manifest(name=name, tag=task, task=task, graphs={"model": "model.onnx"},
                            assets={"processor": "preprocessor_config.json", "task_config": TASK_CONFIG},
                            source=source,
                            conversion={"exporter": done["exporter"], "rejected_exporters": done["rejected_exporters"],
                                        "opset": done["opset"], "dtype": "float32", "seconds": done["seconds"],
                                        "parity": done["parity"], **done["versions"]})
        files = {"model.onnx": Path(work) / "model.onnx", "preprocessor_config.json": folder / "preprocessor_config.json",
                 TASK_CONFIG: Path(work) / TASK_CONFIG}
        return store.publish(manifest, files, move=frozenset({"model.onnx", TASK_CONFIG}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _convert_dual(folder: Path, *, name: str, source: dict[str, Any], task: str, allow_pickle: bool,
                  store: Store) -> Bundle:
    """A two-tower model (convert/dual.py): text.onnx beside vision.onnx or audio.onnx, tokenizer, processor."""
    from gpux.convert.dual import export_dual
    from gpux.convert.media import _processor

    work = Path(store.scratch("convert-"))
    try:
        done = export_dual(folder, work, _processor(folder), allow_pickle=allow_pickle)
        if not (folder / "tokenizer.json").is_file():
            raise ConvertError("the model folder has no tokenizer.json (its text tower's fast tokenizer)",
                               hint="pull a checkpoint saved with its processor")
        task_cfg = {"task": task, "model_type": done["model_type"], "image_size": done["image_size"],
                    "logit_scale": done["logit_scale"], "logit_bias": done["logit_bias"],
                    "max_length": done["text_max_length"], "text_output": "text_embeds",
                    "media_graph": done["second"], "media_output": done["second_output"]}
        (work / TASK_CONFIG).write_text(json.dumps(task_cfg, indent=2))
        second = done["second"]
        manifest = Manifest(name=name, tag=task, task=task, graphs={second: f"{second}.onnx", "text": "text.onnx"},
                            default_graph=second,
                            assets={"tokenizer": "tokenizer.json", "processor": "preprocessor_config.json",
                                    "task_config": TASK_CONFIG}, source=source,
                            conversion={"exporter": done["exporter"], "opset": done["opset"], "dtype": "float32",
                                        "seconds": done["seconds"], "parity": done["parity"], **done["versions"]})
        files = {f"{second}.onnx": work / f"{second}.onnx", "text.onnx": work / "text.onnx",
                 "tokenizer.json": folder / "tokenizer.json",
                 "preprocessor_config.json": folder / "preprocessor_config.json", TASK_CONFIG: work / TASK_CONFIG}
        return store.publish(manifest, files, move=frozenset({f"{second}.onnx", "text.onnx", TASK_CONFIG}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _convert_video(folder: Path, *, name: str, source: dict[str, Any], allow_pickle: bool, store: Store) -> Bundle:
    """A video–text model (convert/video.py): one graph, tokenizer, image processor, frame count."""
    from gpux.convert.media import _processor
    from gpux.convert.video import export_video

    task = "zero-shot-video-classification"
    work = Path(store.scratch("convert-"))
    try:
        done = export_video(folder, work, _processor(folder), allow_pickle=allow_pickle)
        if not (folder / "tokenizer.json").is_file():
            raise ConvertError("the model folder has no tokenizer.json (its text side's fast tokenizer)",
                               hint="pull a checkpoint saved with its processor")
        task_cfg = {"task": task, "model_type": done["model_type"], "num_frames": done["num_frames"],
                    "image_size": done["image_size"], "max_length": done["text_max_length"],
                    "output": "logits_per_video"}
        (work / TASK_CONFIG).write_text(json.dumps(task_cfg, indent=2))
        manifest = Manifest(name=name, tag=task, task=task, graphs={"model": "model.onnx"},
                            assets={"tokenizer": "tokenizer.json", "processor": "preprocessor_config.json",
                                    "task_config": TASK_CONFIG}, source=source,
                            conversion={"exporter": done["exporter"], "opset": done["opset"], "dtype": "float32",
                                        "seconds": done["seconds"], "parity": done["parity"], **done["versions"]})
        files = {"model.onnx": work / "model.onnx", "tokenizer.json": folder / "tokenizer.json",
                 "preprocessor_config.json": folder / "preprocessor_config.json", TASK_CONFIG: work / TASK_CONFIG}
        return store.publish(manifest, files, move=frozenset({"model.onnx", TASK_CONFIG}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _ctc_vocabulary(folder: Path, config: Any) -> dict[str, Any]:
    """What CTC decoding needs, from the folder's tokenizer files (Wav2Vec2CTCTokenizer's vocab.json)."""
    vocab_path = folder / "vocab.json"
    if not vocab_path.is_file():
        raise ConvertError("the speech model has no vocab.json (its CTC tokenizer)",
                           hint="pull a checkpoint saved with its processor (tokenizer and feature extractor)")
    vocab = read_json(vocab_path)
    if vocab and all(isinstance(v, dict) for v in vocab.values()):  # multilingual layout: {lang: {token: id}}
        vocab = next(iter(vocab.values()))
    tok_cfg = read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    tokens = {int(i): t for t, i in vocab.items()}
    for i, added in (tok_cfg.get("added_tokens_decoder") or {}).items():
        tokens.setdefault(int(i), added.get("content", ""))
    size = max(tokens) + 1 if tokens else 0
    return {"tokens": [tokens.get(i, "") for i in range(size)],
            "pad": tok_cfg.get("pad_token", "<pad>") if isinstance(tok_cfg.get("pad_token", "<pad>"), str)
            else tok_cfg["pad_token"].get("content", "<pad>"),
            "word_delimiter": tok_cfg.get("word_delimiter_token", "|") or "|",
            "replace_word_delimiter_char": tok_cfg.get("replace_word_delimiter_char", " "),
            "do_lower_case": bool(tok_cfg.get("do_lower_case", False)),
            "clean_up_tokenization_spaces": bool(tok_cfg.get("clean_up_tokenization_spaces", False))}


def _convert_decoder(folder: Path, *, name: str, source: dict[str, Any], config: dict[str, Any],
                     tok: dict[str, Any], work: Path, allow_pickle: bool, store: Store) -> Bundle:
    """A causal LM: the cache graph (gpux.convert.decoder) and the generation facts beside the tokenizer."""
    import time

    import torch
    import transformers

    from gpux.convert import decoder, generation
    from gpux.convert.export import OPSET

    start = time.perf_counter()
    arch, geometry, exporter, parity, rejected, loaded = decoder.export(folder, work / "model.onnx",
                                                                       allow_pickle=allow_pickle, opset=OPSET)
    # The loaded config knows every family's name for its context (GPT-2 writes n_positions).
    positions = getattr(loaded, "max_position_embeddings", None)
    max_length = min(_max_length(folder, config, 0), *([int(positions)] if isinstance(positions, int) else []))
    task_cfg: dict[str, Any] = {
        "task": "text-generation", "max_length": max_length, "inputs": geometry.input_names,
        "output": "logits", "cache": geometry.as_json(), **tok,
        "model_type": arch.model_type, "ort_model_type": arch.ort_model_type,
        "ort_model_type_source": arch.ort_model_type_source,
        "num_heads": int(config.get("num_attention_heads") or config.get("n_head") or 0),
        "hidden_size": int(config.get("hidden_size") or config.get("n_embd") or 0),
        "generation": generation.facts(folder, config, max_length),
    }
    (work / TASK_CONFIG).write_text(json.dumps(task_cfg, indent=2))
    import onnx

    from gpux.convert import weights

    weights.save(onnx.load(str(work / "model.onnx")), work / "model.onnx")  # large weights beside the graph
    manifest = Manifest(
        name=name, tag="text-generation", task="text-generation", graphs={"model": "model.onnx"},
        assets={"tokenizer": "tokenizer.json", "task_config": TASK_CONFIG}, source=source,
        conversion={"exporter": exporter, "rejected_exporters": rejected, "opset": OPSET, "dtype": "float32",
                    "seconds": round(time.perf_counter() - start, 3), "parity": parity,
                    "torch": torch.__version__, "transformers": transformers.__version__},
    )
    graph = weights.files_of(work / "model.onnx", "model.onnx")
    files = {**graph, "tokenizer.json": folder / "tokenizer.json", TASK_CONFIG: work / TASK_CONFIG}
    return store.publish(manifest, files, move=frozenset({*graph, TASK_CONFIG}))
