"""The convert box: a Hugging Face model folder -> a parity-checked ONNX bundle in the store.

Needs the ``convert`` extra (torch, transformers, onnxscript). Nothing on the run
path imports this package; ``gpux run`` of a model not yet converted runs
``gpux pull`` in a child process.
"""
