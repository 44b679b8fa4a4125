"""Speech recognition with CTC (``…ForCTC``, wav2vec2-style): greedy CTC decoding of each clip.

``{"inputs": ["a.wav"]}`` -> ``{"transcriptions": [{"text": ...}]}``. Decoding is what transformers'
ASR pipeline does for CTC models (``Wav2Vec2CTCTokenizer.decode`` without skipping special tokens): the
argmax token per frame, repeats merged, the pad (blank) token dropped, the word delimiter made a space,
stripped (lower-cased where the tokenizer says so). Clips of different lengths run one by one, as the
pipeline does, so zero padding never changes a transcription.
"""

from __future__ import annotations

from itertools import groupby
from typing import Any

import numpy as np

from gpux.tasks.media import AudioTask


def ctc_text(ids: np.ndarray, vocab: dict[str, Any]) -> str:
    tokens = vocab["tokens"]
    chars = [t for t, _ in groupby(tokens[i] if 0 <= i < len(tokens) else "" for i in ids.tolist())]
    text = "".join(vocab["replace_word_delimiter_char"] if c == vocab["word_delimiter"] else c
                   for c in chars if c != vocab["pad"]).strip()
    if vocab.get("do_lower_case"):
        text = text.lower()
    if vocab.get("clean_up_tokenization_spaces"):
        for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                     (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
            text = text.replace(a, b)
    return text


class SpeechRecognizer(AudioTask):
    answer_key = "transcriptions"
    unit = "clips"

    def run_counted(self, items: list[Any], truncate: bool | None = None) -> tuple[list[Any], list[int]]:
        # Equal lengths batch; otherwise one by one, so no padded frame is ever decoded.
        groups = [items] if len({len(x) for x in items}) == 1 else [[x] for x in items]
        texts: list[Any] = []
        for group in groups:
            logits = np.asarray(self.model.run(self.feed(group))[self.config["output"]])
            texts.extend({"text": ctc_text(row.argmax(-1), self.config["ctc"])} for row in logits)
        return texts, [1] * len(items)
