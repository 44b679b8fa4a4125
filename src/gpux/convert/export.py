"""Hugging Face encoder -> ONNX, then a parity check against PyTorch.

Exporters are tried in order (see docs/convert.md for the measurements behind
it): torch's TorchScript exporter first (about 1 s for MiniLM, and the graph
shape onnxruntime's attention fusion knows), then ``dynamo=True`` (slower but
covers more models) if the first raises or fails parity. The TorchScript
exporter leaves the module in training mode, so ``eval()`` is restored after
it: otherwise dropout makes PyTorch itself disagree with the graph. Only this
module (and architectures.py, on the model it loaded) imports torch.

Nothing here names a model family: the task picks a transformers Auto class and
the outputs to export (:data:`TASK_HEADS`), and the graph's inputs and position
offset come from the loaded model (architectures.py). What cannot work is a
:class:`ConvertError` naming the architecture and the task.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import numpy as np

from gpux.convert.architectures import TEXT_INPUTS, Architecture, derive
from gpux.convert.detect import capabilities, refuse_remote_code
from gpux.errors import ConvertError
from gpux.store.blobs import disk_full, no_space

_T = TypeVar("_T")


class Head(NamedTuple):
    """How a task is loaded and what its graph returns."""

    #: The transformers Auto class that loads the model for the task.
    auto: str
    #: The model output fields exported, in graph output order.
    outputs: tuple[str, ...]
    #: Whether the outputs have a sequence axis (compared on real tokens only; dynamic axis 1).
    per_token: bool


TASK_HEADS: dict[str, Head] = {
    "feature-extraction": Head("AutoModel", ("last_hidden_state",), True),
    "text-classification": Head("AutoModelForSequenceClassification", ("logits",), False),
    "text-ranking": Head("AutoModelForSequenceClassification", ("logits",), False),
    "token-classification": Head("AutoModelForTokenClassification", ("logits",), True),
    "question-answering": Head("AutoModelForQuestionAnswering", ("start_logits", "end_logits"), True),
    "fill-mask": Head("AutoModelForMaskedLM", ("logits",), True),
    # Exported with its key/value cache by gpux.convert.decoder (this row loads it and names the head).
    "text-generation": Head("AutoModelForCausalLM", ("logits",), True),
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
    #: The graph's outputs, in order; ``output`` is the first.
    outputs: tuple[str, ...]
    exporter: str = ""
    parity: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)
    #: Exporters tried before the one that worked, with why they were passed over.
    rejected: dict[str, str] = field(default_factory=dict)

    @property
    def output(self) -> str:
        return self.outputs[0]


def _named(config: Any) -> str:
    """The model as a message names it: its saved class, else its model type."""
    archs = getattr(config, "architectures", None) or []
    return f"{archs[0]} ({config.model_type})" if archs else repr(config.model_type)


def _load(folder: Path, task: str, allow_pickle: bool) -> tuple[Any, Architecture]:
    import transformers

    refuse_remote_code(folder)
    try:
        config = transformers.AutoConfig.from_pretrained(folder)
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise ConvertError("the model needs its own Python code to load; gpux does not run a model's code "
                           "(trust_remote_code)", hint="use a model whose model_type transformers has built in") from exc
    head = TASK_HEADS[task]
    auto = getattr(transformers, head.auto)
    if type(config) not in auto._model_mapping:  # transformers has no such head for this family
        able = capabilities(folder)
        raise ConvertError(f"{_named(config)} has no {task} head in transformers {transformers.__version__}",
                           hint=f"it converts for: {', '.join(t for t in able[1] if t != task)}"
                           if able and [t for t in able[1] if t != task] else "use a model of another architecture")
    has_safetensors = any(folder.glob("*.safetensors"))
    if not has_safetensors and not allow_pickle:
        raise ConvertError("the model has no .safetensors weights, only pickle files",
                           hint="pickle can run code when loaded; pass --allow-pickle if you trust the source")
    try:  # eager attention: the graph shape ORT fuses into Attention
        model, info = auto.from_pretrained(folder, use_safetensors=has_safetensors, attn_implementation="eager",
                                           output_loading_info=True)
    except Exception as exc:
        if has_safetensors or not _pickle_refused(exc):
            raise
        raise ConvertError("torch refused to load the pickle weights with weights_only=True (they hold objects "
                           f"other than tensors): {_first_line(exc)}",
                           hint="gpux never unpickles arbitrary objects; convert the weights to .safetensors "
                                "where you trust the code, then pull that folder") from exc
    missing = sorted(info.get("missing_keys") or [])
    if missing and task != "feature-extraction":  # a head started from random weights answers nonsense
        able = capabilities(folder)
        raise ConvertError(f"{_named(config)} has no weights for the {task} head ({len(missing)} missing, "
                           f"e.g. {missing[0]})",
                           hint=f"it converts for: {', '.join(able[1])}" if able and able[1] else
                           "pull a checkpoint trained for this task")
    return model.eval(), derive(model, _tokenizer_inputs(folder))


def _tokenizer_inputs(folder: Path) -> list[str]:
    """What the folder's tokenizer emits (``model_input_names``); every text input when it cannot be loaded."""
    from transformers import AutoTokenizer

    try:
        return list(AutoTokenizer.from_pretrained(folder).model_input_names)
    except Exception:  # the pipeline refuses a folder without a fast tokenizer before export; export alone is lenient
        return list(TEXT_INPUTS)


def _pickle_refused(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) is torch's weights_only unpickler refusing a file."""
    import pickle

    while exc is not None:
        if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc) or "Weights only" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def _reason(exc: BaseException) -> str:
    """One line on why an exporter failed: torch.export's own summary line rather than its boilerplate."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "## Exception summary" in lines[:-1]:
        return lines[lines.index("## Exception summary") + 1][:300]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def first_exporter(kinds: tuple[str, ...], attempt: Callable[[str], _T],
                   failure: Callable[[str], ConvertError]) -> tuple[str, _T, dict[str, str]]:
    """``attempt(kind)`` for each exporter in order until one returns: (kind, its result, why the earlier ones
    were passed over). A :class:`ConvertError` (missed parity) or any exporter exception passes to the next;
    a full disk stops at once (another exporter would fail the same way); none left: ``failure(details)``."""
    from gpux.store.blobs import disk_full, no_space

    rejected: dict[str, str] = {}
    for kind in kinds:
        try:
            return kind, attempt(kind), rejected
        except ConvertError as exc:
            rejected[kind] = exc.message
        except Exception as exc:  # exporters raise many unrelated types
            full = no_space(exc)
            if full is not None:
                from gpux.store.local import home

                raise disk_full(home(), full, "the exported model") from exc
            rejected[kind] = _reason(exc)
    raise failure("; ".join(f"{k}: {v}" for k, v in rejected.items()))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _examples(arch: Architecture, config: Any, batch: int, seq: int, seed: int) -> dict[str, Any]:
    """Random token ids with real padding (the pad id in padded places): an all-ones mask would let tracing
    drop it. Where the model has a second token type, the back half of each row is segment 1 (a pair)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    vocab, pad = int(getattr(config, "vocab_size", 1000) or 1000), int(getattr(config, "pad_token_id", 0) or 0)
    ids = torch.randint(5, max(6, vocab), (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    for row in range(1, batch):
        mask[row, max(2, seq - row * seq // (batch + 1)):] = 0
    types = torch.zeros_like(ids)
    if int(getattr(config, "type_vocab_size", 0) or 0) >= 2:
        types[:, seq // 2:] = 1
    feed = {"input_ids": ids * mask + pad * (1 - mask), "attention_mask": mask, "token_type_ids": types * mask}
    return {k: feed[k] for k in arch.inputs}


def _wrapper(model: Any, names: tuple[str, ...], outputs: tuple[str, ...]) -> Any:
    """Positional tensors in (the graph's inputs, in order), the task's output tensors out."""
    import torch

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            out = self.model(**dict(zip(names, tensors)))
            got = tuple(getattr(out, n) for n in outputs)
            return got if len(got) > 1 else got[0]

    return Wrapper().eval()


def _run_exporter(kind: str, wrapper: Any, example: dict[str, Any], out: Path, head: Head) -> None:
    import torch

    names = list(example)
    with torch.no_grad(), contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter; failures still raise
        if kind == "torchscript":
            axes = {k: {0: "batch", 1: "sequence"} for k in names}
            axes.update({o: {0: "batch", 1: "sequence"} if head.per_token else {0: "batch"} for o in head.outputs})
            torch.onnx.export(wrapper, tuple(example.values()), str(out), input_names=names,
                              output_names=list(head.outputs), dynamic_axes=axes, opset_version=OPSET, dynamo=False,
                              do_constant_folding=True)
        else:
            batch, seq = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("sequence", min=1, max=8192)
            torch.onnx.export(wrapper, tuple(example.values()), str(out), input_names=names,
                              output_names=list(head.outputs), dynamic_shapes=(tuple({0: batch, 1: seq} for _ in names),),
                              opset_version=OPSET, dynamo=True, external_data=False, verbose=False)
    wrapper.eval()  # the TorchScript exporter leaves the module in training mode


def _keep_inputs(path: Path, names: tuple[str, ...]) -> None:
    """Give the graph back an input the tracer dropped because the model never reads it (MRA's attention_mask).

    The graph's interface stays what task.json promises (every task pipeline feeds the mask and counts tokens
    with it); onnxruntime accepts an input no node reads. External weights stay where they are.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    have = {i.name: i for i in model.graph.input}
    if all(n in have for n in names):
        return
    ordered = [have.get(n) or onnx.helper.make_tensor_value_info(n, onnx.TensorProto.INT64, ["batch", "sequence"])
               for n in names] + [i for i in model.graph.input if i.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(ordered)
    onnx.save(model, str(path))


def export(folder: Path, task: str, out: Path, *, allow_pickle: bool = False,
           exporters: tuple[str, ...] = EXPORTERS) -> Exported:
    """Export the model in ``folder`` for ``task`` to ``out`` and check parity.

    Raises :class:`ConvertError` for a family transformers has no head for, a checkpoint without the
    task's head weights, pickle-only weights without ``allow_pickle``, and when every exporter fails or
    misses parity; each names the architecture and the task.
    """
    import torch
    import transformers

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed"
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    start = time.perf_counter()
    model, arch = _load(folder, task, allow_pickle)
    head = TASK_HEADS[task]
    example = _examples(arch, model.config, 2, 16, seed=0)
    rejected: dict[str, str] = {}
    for kind in exporters:
        try:
            _run_exporter(kind, _wrapper(model, arch.inputs, head.outputs), example, out, head)
            _keep_inputs(out, arch.inputs)
            parity = check_parity(model, arch, out, head)
        except ConvertError as exc:
            rejected[kind] = exc.message
            continue
        except Exception as exc:  # exporters raise many unrelated types
            full = no_space(exc)
            if full is not None:  # another exporter would fail the same way: say what is wrong
                from gpux.store.local import home

                raise disk_full(home(), full, "the exported model") from exc
            rejected[kind] = _reason(exc)
            continue
        if tuple(parity["inputs"]) != arch.inputs:
            raise ConvertError(f"the exported graph takes {parity['inputs']}, not {list(arch.inputs)}",
                               hint="report this model")
        return Exported(out, arch, head.outputs, kind, parity, time.perf_counter() - start,
                        {"torch": torch.__version__, "transformers": transformers.__version__}, rejected)
    detail = "; ".join(f"{k}: {v}" for k, v in rejected.items())
    raise ConvertError(f"{arch.class_name} ({arch.model_type}) for {task}: no exporter produced a matching "
                       f"ONNX model ({detail})", hint="run with -v for details; try --task or another revision")


def check_parity(model: Any, arch: Architecture, path: Path, head: Head) -> dict[str, Any]:
    """PyTorch vs onnxruntime on generated inputs, every output; :class:`ConvertError` below the cosine floor.

    Per-token outputs are compared on real tokens only (padded places carry no meaning): per token for
    [batch, seq, dim] outputs, per row with padded places zeroed for [batch, seq] ones (answer spans)."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    taken = [i.name for i in sess.get_inputs()]  # the derived inputs (_keep_inputs), checked here
    cases = []
    for i, (b, s) in enumerate(PARITY_CASES):
        feed = _examples(arch, model.config, b, s, seed=100 + i)
        with torch.no_grad():
            out = model(**feed)
        got_all = dict(zip(head.outputs, sess.run(list(head.outputs),
                                                  {k: v.numpy() for k, v in feed.items() if k in taken})))
        keep = feed["attention_mask"].numpy().astype(bool)
        cos_min, max_abs = 1.0, 0.0
        for name in head.outputs:
            ref, got = getattr(out, name).float().numpy(), got_all[name]
            if head.per_token and ref.ndim == 3:
                ref, got = ref[keep], got[keep]
            elif head.per_token:
                ref, got = ref * keep, got * keep
            ref, got = ref.reshape(ref.shape[0], -1), got.reshape(got.shape[0], -1)
            cos = np.sum(ref * got, -1) / np.maximum(np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1),
                                                     1e-12)
            cos_min, max_abs = min(cos_min, float(cos.min())), max(max_abs, float(np.abs(ref - got).max()))
        cases.append({"batch": b, "sequence": s, "cosine_min": cos_min, "max_abs": max_abs})
    cos_min = min(float(c["cosine_min"]) for c in cases)
    max_abs = max(float(c["max_abs"]) for c in cases)
    if cos_min < PARITY_MIN_COSINE:
        raise ConvertError(f"the ONNX model does not match PyTorch: cosine {cos_min:.6f} "
                           f"< {PARITY_MIN_COSINE}, max-abs {max_abs:.3g}",
                           hint="report this model; try --task or another revision")
    return {"cases": cases, "cosine_min": cos_min, "max_abs": max_abs, "threshold_cosine": PARITY_MIN_COSINE,
            "inputs": taken, "outputs": list(head.outputs)}
