"""An encoder–decoder folder -> a bundle: encoder.onnx, decoder.onnx, tokenizer, task.json (gpux.convert.seq2seq).

task.json carries what the run path needs without transformers: the graphs' geometry, the generation facts
(gpux.convert.generation, read as ``model.generate`` reads them), the decoder's own rules from
``generation_config.json`` (suppressed tokens, a forced first token; for speech models Whisper's language,
task and timestamp tokens) and, for speech, the feature extractor's config beside it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from gpux.convert.detect import read_json
from gpux.errors import ConvertError
from gpux.store.blobs import disk_full, no_space
from gpux.store.bundle import Bundle, Manifest
from gpux.store.local import Store

TASK_CONFIG = "task.json"
#: generation_config.json keys the decoder loop applies (each as transformers' logits processor of that name).
DECODER_RULES = ("suppress_tokens", "begin_suppress_tokens", "forced_bos_token_id", "forced_eos_token_id",
                 "no_repeat_ngram_size", "min_length", "max_length")
#: Whisper's own keys (language/task/timestamp tokens); present only in speech models' generation configs.
SPEECH_RULES = ("no_timestamps_token_id", "lang_to_id", "task_to_id", "is_multilingual", "max_initial_timestamp_index",
                "prev_sot_token_id", "forced_decoder_ids")
SEQ2SEQ_TASKS = ("text2text-generation", "automatic-speech-recognition", "image-to-text")
#: What each task's encoder takes.
MAIN_INPUT = {"text2text-generation": "input_ids", "automatic-speech-recognition": "input_features",
              "image-to-text": "pixel_values"}


def is_seq2seq_folder(folder: Path) -> bool:
    """A folder whose head generates through an encoder and a cross-attending decoder (gpux.convert.detect)."""
    from gpux.convert.detect import capabilities, folder_config

    config = folder_config(folder)
    text = config.get("text_config")
    cross = bool(config.get("is_encoder_decoder")) or (isinstance(config.get("vision_config"), dict)
                                                       and isinstance(text, dict) and bool(text.get("is_decoder")))
    able = capabilities(folder)
    return cross and bool(able and able[1] and able[1][0] in SEQ2SEQ_TASKS)  # not a CTC model


def _rules(folder: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    gen = read_json(folder / "generation_config.json") if (folder / "generation_config.json").is_file() else {}
    config = read_json(folder / "config.json")
    return {k: gen.get(k, config.get(k)) for k in keys if gen.get(k, config.get(k)) is not None}


def convert_seq2seq(folder: Path, *, name: str, source: dict[str, Any], task: str, allow_pickle: bool,
                    store: Store) -> Bundle:
    import onnx
    import torch
    import transformers

    from gpux.convert import generation, seq2seq_parity, weights
    from gpux.convert.export import OPSET
    from gpux.convert.pipeline import _max_length, _tokenizer_facts

    if not (folder / "tokenizer.json").is_file():
        raise ConvertError("the model has no tokenizer.json (a fast tokenizer)",
                           hint="gpux tokenizes with the `tokenizers` library, which needs tokenizer.json")
    start = time.perf_counter()
    work = Path(store.scratch("convert-"))
    try:
        model, geometry, exporter, parity, rejected = seq2seq_parity.export(folder, work, allow_pickle=allow_pickle,
                                                                     opset=OPSET)
        speech = geometry.main == "input_features"
        if geometry.main != MAIN_INPUT[task]:
            raise ConvertError(f"task {task} does not fit this model: its encoder takes {geometry.main}",
                               hint="leave --task out to detect it")
        config = read_json(folder / "config.json")
        cfg = model.config
        target = int(getattr(cfg, "max_target_positions", 0) or 0) or int(
            (_rules(folder, ("max_length",)).get("max_length")) or 512)
        source_len = geometry.source or _max_length(folder, config, 0)
        tok = {} if speech else _tokenizer_facts(folder, task)
        from gpux.convert.seq2seq import Parts

        eos = Parts(model).eos()
        task_cfg: dict[str, Any] = {
            "task": task, "seq2seq": geometry.as_json(), "max_length": source_len, "max_target": target,
            "model_type": cfg.model_type, **tok,
            "generation": generation.facts(folder, config, target),
            "rules": _rules(folder, DECODER_RULES),
        }
        task_cfg["pad_id"] = task_cfg.get("pad_id", int(getattr(cfg, "pad_token_id", 0) or 0))
        if eos:  # a captioner ends on its text decoder's separator, not the config's eos
            task_cfg["generation"]["eos_token_ids"] = eos
        files: dict[str, Path] = {"tokenizer.json": folder / "tokenizer.json", TASK_CONFIG: work / TASK_CONFIG}
        assets = {"tokenizer": "tokenizer.json", "task_config": TASK_CONFIG}
        if geometry.main == "pixel_values":
            if not (folder / "preprocessor_config.json").is_file():
                raise ConvertError("the captioner has no preprocessor_config.json (how its images are prepared)",
                                   hint="pull a checkpoint saved with its processor (processor.save_pretrained)")
            task_cfg["image_size"] = list(geometry.features or ())
            files["preprocessor_config.json"] = folder / "preprocessor_config.json"
            assets["processor"] = "preprocessor_config.json"
        if speech:
            task_cfg["speech"] = _rules(folder, SPEECH_RULES)
            task_cfg["sampling_rate"] = int(read_json(folder / "preprocessor_config.json").get("sampling_rate")
                                            or 16000) if (folder / "preprocessor_config.json").is_file() else 16000
            if not (folder / "preprocessor_config.json").is_file():
                raise ConvertError("the speech model has no preprocessor_config.json (its log-mel settings)",
                                   hint="pull a checkpoint saved with its processor (processor.save_pretrained)")
            files["preprocessor_config.json"] = folder / "preprocessor_config.json"
            assets["processor"] = "preprocessor_config.json"
        (work / TASK_CONFIG).write_text(json.dumps(task_cfg, indent=2))
        graphs: dict[str, Path] = {}
        for role in ("encoder", "decoder"):
            path = work / f"{role}.onnx"
            weights.save(onnx.load(str(path)), path)  # large weights beside the graph
            graphs.update(weights.files_of(path, f"{role}.onnx"))
        manifest = Manifest(
            name=name, tag=task, task=task, graphs={"encoder": "encoder.onnx", "decoder": "decoder.onnx"},
            default_graph="decoder", assets=assets, source=source,
            # Whisper tiny.en, measured per graph in its own process: the encoder's pre-packed weight copy
            # buys nothing (129 vs 127-140 ms per 30 s, 16 MB less without); the decoder's does (3.4-4.1 vs
            # 4.3-4.5 ms per step, for 76 MB), and the arena is worth its memory on both (encoder +35 ms without).
            runtime={"graphs": {"encoder": {"prepacking": False}}},
            conversion={"exporter": exporter, "rejected_exporters": rejected, "opset": OPSET, "dtype": "float32",
                        "seconds": round(time.perf_counter() - start, 3), "parity": parity,
                        "torch": torch.__version__, "transformers": transformers.__version__})
        return store.publish(manifest, {**graphs, **files}, move=frozenset({*graphs, TASK_CONFIG}))
    except OSError as exc:
        if no_space(exc) is None:
            raise
        raise disk_full(store.root, exc, f"the conversion of {name}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
