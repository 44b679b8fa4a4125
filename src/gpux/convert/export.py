"""Hugging Face encoder -> ONNX, then a parity check against PyTorch.

Exporters are tried in order (see docs/convert.md for the measurements behind
it): torch's TorchScript exporter first (about 1 s for MiniLM, and the graph
shape onnxruntime's attention fusion knows), then ``dynamo=True`` (slower but
covers more models) if the first raises or fails parity. The TorchScript
exporter leaves the module in training mode, so ``eval()`` is restored after
it: otherwise dropout makes PyTorch itself disagree with the graph. Only this
module imports torch.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpux.convert.architectures import ARCHITECTURES, Architecture
from gpux.convert.detect import refuse_remote_code
from gpux.errors import ConvertError
from gpux.store.blobs import disk_full, no_space

#: The task's exported output, and the transformers Auto class that loads the model for it.
TASK_HEADS: dict[str, tuple[str, str]] = {
    "feature-extraction": ("AutoModel", "last_hidden_state"),
    "text-classification": ("AutoModelForSequenceClassification", "logits"),
}
OPSET = 18
PARITY_MIN_COSINE = 0.999
#: (batch, sequence length) pairs the parity check runs; rows after the first are padded shorter.
PARITY_CASES = ((1, 8), (2, 32), (4, 61))


EXPORTERS = ("torchscript", "dynamo")


@dataclass
class Exported:
    path: Path
    architecture: Architecture
    output: str
    exporter: str = ""
    parity: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)
    #: Exporters tried before the one that worked, with why they were passed over.
    rejected: dict[str, str] = field(default_factory=dict)


def _load(folder: Path, task: str, allow_pickle: bool) -> tuple[Any, Architecture]:
    import transformers

    refuse_remote_code(folder)
    try:
        config = transformers.AutoConfig.from_pretrained(folder)
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise ConvertError("the model needs its own Python code to load; gpux does not run a model's code "
                           "(trust_remote_code)", hint=f"supported: {', '.join(sorted(ARCHITECTURES))}") from exc
    arch = ARCHITECTURES.get(config.model_type)
    if arch is None:
        raise ConvertError(f"architecture {config.model_type!r} is not supported for export yet",
                           hint=f"supported: {', '.join(sorted(ARCHITECTURES))}")
    auto = getattr(transformers, TASK_HEADS[task][0])
    has_safetensors = any(folder.glob("*.safetensors"))
    if not has_safetensors and not allow_pickle:
        raise ConvertError("the model has no .safetensors weights, only pickle files",
                           hint="pickle can run code when loaded; pass --allow-pickle if you trust the source")
    try:  # eager attention: the graph shape ORT fuses into Attention
        model = auto.from_pretrained(folder, use_safetensors=has_safetensors, attn_implementation="eager")
    except Exception as exc:
        if has_safetensors or not _pickle_refused(exc):
            raise
        raise ConvertError("torch refused to load the pickle weights with weights_only=True (they hold objects "
                           f"other than tensors): {_first_line(exc)}",
                           hint="gpux never unpickles arbitrary objects; convert the weights to .safetensors "
                                "where you trust the code, then pull that folder") from exc
    return model.eval(), arch


def _pickle_refused(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) is torch's weights_only unpickler refusing a file."""
    import pickle

    while exc is not None:
        if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc) or "Weights only" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _examples(arch: Architecture, vocab: int, batch: int, seq: int, seed: int) -> dict[str, Any]:
    """Random token ids with real padding: an all-ones mask would let tracing drop it."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, max(6, vocab), (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    for row in range(1, batch):
        mask[row, max(2, seq - row * seq // (batch + 1)):] = 0
    feed = {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return {k: feed[k] for k in arch.inputs}


def _run_exporter(kind: str, wrapper: Any, example: dict[str, Any], out: Path, output: str) -> None:
    import torch

    names = list(example)
    with torch.no_grad(), contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter; failures still raise
        if kind == "torchscript":
            axes = {k: {0: "batch", 1: "sequence"} for k in names}
            axes[output] = {0: "batch"} if output == "logits" else {0: "batch", 1: "sequence"}
            torch.onnx.export(wrapper, tuple(example.values()), str(out), input_names=names, output_names=[output],
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)
        else:
            batch, seq = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("sequence", min=1, max=8192)
            torch.onnx.export(wrapper, tuple(example.values()), str(out), input_names=names, output_names=[output],
                              dynamic_shapes={k: {0: batch, 1: seq} for k in names}, opset_version=OPSET,
                              dynamo=True, external_data=False, verbose=False)
    wrapper.eval()  # the TorchScript exporter leaves the module in training mode


def export(folder: Path, task: str, out: Path, *, allow_pickle: bool = False,
           exporters: tuple[str, ...] = EXPORTERS) -> Exported:
    """Export the model in ``folder`` for ``task`` to ``out`` and check parity.

    Raises :class:`ConvertError` for unsupported architectures, pickle-only
    weights without ``allow_pickle``, and when every exporter fails or misses parity.
    """
    import torch
    import transformers

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed"
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    start = time.perf_counter()
    model, arch = _load(folder, task, allow_pickle)
    output = TASK_HEADS[task][1]

    class Wrapper(torch.nn.Module):
        """Named tensor inputs in, the task's one output tensor out."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return getattr(self.model(input_ids=input_ids, attention_mask=attention_mask, **extra), output)

    vocab = int(getattr(model.config, "vocab_size", 1000))
    example = _examples(arch, vocab, 2, 16, seed=0)
    rejected: dict[str, str] = {}
    for kind in exporters:
        try:
            _run_exporter(kind, Wrapper().eval(), example, out, output)
            parity = check_parity(model, arch, out, output, vocab)
        except ConvertError as exc:
            rejected[kind] = exc.message
            continue
        except Exception as exc:  # exporters raise many unrelated types
            full = no_space(exc)
            if full is not None:  # another exporter would fail the same way: say what is wrong
                from gpux.store.local import home

                raise disk_full(home(), full, "the exported model") from exc
            rejected[kind] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            continue
        return Exported(out, arch, output, kind, parity, time.perf_counter() - start,
                        {"torch": torch.__version__, "transformers": transformers.__version__}, rejected)
    detail = "; ".join(f"{k}: {v}" for k, v in rejected.items())
    raise ConvertError(f"no exporter produced a matching ONNX model ({detail})",
                       hint="run with -v for details; try --task or another revision")


def check_parity(model: Any, arch: Architecture, path: Path, output: str, vocab: int) -> dict[str, Any]:
    """PyTorch vs onnxruntime on generated inputs; :class:`ConvertError` below the cosine floor."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cases = []
    for i, (b, s) in enumerate(PARITY_CASES):
        feed = _examples(arch, vocab, b, s, seed=100 + i)
        with torch.no_grad():
            ref = getattr(model(**feed), output).float().numpy()
        got = sess.run(None, {k: v.numpy() for k, v in feed.items()})[0]
        if output == "last_hidden_state":  # padded positions carry no meaning: compare real tokens
            keep = feed["attention_mask"].numpy().astype(bool)
            ref, got = ref[keep], got[keep]
        else:
            ref, got = ref.reshape(b, -1), got.reshape(b, -1)
        cos = np.sum(ref * got, -1) / np.maximum(np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1), 1e-12)
        cases.append({"batch": b, "sequence": s, "cosine_min": float(cos.min()),
                      "max_abs": float(np.abs(ref - got).max())})
    cos_min = min(float(c["cosine_min"]) for c in cases)
    max_abs = max(float(c["max_abs"]) for c in cases)
    if cos_min < PARITY_MIN_COSINE:
        raise ConvertError(f"the ONNX model does not match PyTorch: cosine {cos_min:.6f} "
                           f"< {PARITY_MIN_COSINE}, max-abs {max_abs:.3g}",
                           hint="report this model; try --task or another revision")
    return {"cases": cases, "cosine_min": cos_min, "max_abs": max_abs, "threshold_cosine": PARITY_MIN_COSINE}
