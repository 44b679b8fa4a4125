"""Pre-processing for non-text inputs, beside the tokenizers: images (``image``), audio (``audio``), video.

Each module turns what a client sends (file bytes, base64 data URLs, arrays from Python) into the arrays a
model's graph takes, driven by the model's own processor config (``preprocessor_config.json``), in numpy and
Pillow/soundfile: no torch or transformers on the run path. A request never makes gpux read a path on the
server's disk: the server passes bytes and data URLs only (``allow_paths=False``).
"""
