"""Random-weight decoder LMs (GPT-2, OPT, LLaMA, ...) with a byte-level BPE tokenizer trained here, offline.

A family is data: a transformers config class and its size names (:data:`LM_FAMILIES`). The tokenizer is
trained on a few sentences (incl. accents, CJK and emoji, whose bytes span tokens) and carries a ChatML
chat template, so chat, streaming and batching are tested on the same path real models take.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Once upon a time there was a small model that answered questions.",
    "Café, naïve, résumé — 東京 は 日本 の 首都 です。 Emoji: 🚀🙂 done.",
    "def add(a, b):\n    return a + b\n",
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nHi there!<|im_end|>\n",
]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
VOCAB = 600

#: family -> (config class, its size keyword arguments). Every family gets the same vocabulary and tokens.
LM_FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2": ("GPT2Config", {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256}),
    "opt": ("OPTConfig", {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 128,
                          "max_position_embeddings": 256, "word_embed_proj_dim": 64}),
    "llama": ("LlamaConfig", {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                              "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 256}),
}


def tokenizer() -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` (GPT-2 style) with ChatML tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def tiny_lm(folder: Path, family: str, seed: int = 0, **overrides: Any) -> Path:
    """Save a random-weight ``family`` causal LM (safetensors) with the trained tokenizer and a template."""
    import torch
    import transformers as tf

    tok = tokenizer()
    cls, sizes = LM_FAMILIES[family]
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    cfg = getattr(tf, cls)(vocab_size=len(tok), bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                           **{**sizes, **overrides})
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # livelier logits than the default init, so greedy text is not one repeated token
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    model.generation_config.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
