"""What ``gpux bench`` measures: a strict plan, from flags or from a ``suite.yml``.

A suite file holds the same keys as the flags; a flag given on the command line
overrides the suite's value. Per model, ``batch_sizes``/``seq_lens``/``precisions``
may be overridden::

    models:
      - sentence-transformers/all-MiniLM-L6-v2
      - {model: my-classifier, batch_sizes: [1, 32]}
    batch_sizes: [1, 4, 16]
    seq_lens: [128]
    precisions: [fp32, int8]
    baselines: [onnxruntime, pytorch]
    runs: 20
    warmup: 3
    out: bench-results

``input`` (per model or for all) gives a raw ONNX model real inputs, as ``gpux run
--input`` takes them; without it, inputs are synthesised from the graph's signature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator

from gpux.errors import UsageError

Baseline = Literal["onnxruntime", "pytorch", "llamacpp"]
DTYPES = ("fp32", "fp16", "int8", "int8-static", "int4")  # int4: text-generation
LEVELS = ("O1", "O2", "O3")


def check_precision(label: str) -> str:
    """``fp32``, ``fp16``, ``int8``, ``int8-static``, optionally after a level: ``O2+int8``."""
    level, plus, dtype = label.rpartition("+")
    if dtype not in DTYPES or (plus and level.upper() not in LEVELS):
        raise ValueError(f"precision {label!r} is not one of {', '.join(DTYPES)} (optionally O1+/O2+/O3+ before it)")
    return f"{level.upper()}+{dtype}" if plus else dtype


def variant_of(label: str) -> Any:
    """The convert box's Variant for a precision label; None for the plain fp32 graph."""
    from gpux.convert.optimize import Variant

    level, _, dtype = label.rpartition("+")
    if not level and dtype == "fp32":
        return None
    return Variant(optimize=level or None, dtype="fp16" if dtype == "fp16" else "fp32",
                   quantize=dtype if dtype.startswith("int") else None)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Grid(_Strict):
    batch_sizes: list[PositiveInt] | None = None
    seq_lens: list[PositiveInt] | None = None
    precisions: list[str] | None = None

    @field_validator("precisions")
    @classmethod
    def _precisions(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [check_precision(v) for v in value]


class ModelEntry(_Grid):
    """One model of a suite, optionally with its own grid."""

    model: str
    #: Inputs as for ``gpux run --input`` (JSON or @file): for raw models whose inputs cannot be synthesised.
    input: str | None = None


class Plan(_Strict):
    """Everything one ``gpux bench`` run measures."""

    models: list[Union[str, ModelEntry]] = Field(min_length=1)
    batch_sizes: list[PositiveInt] = [1, 4, 16]
    seq_lens: list[PositiveInt] = [128]
    precisions: list[str] = ["fp32"]
    baselines: list[Baseline] = ["onnxruntime", "pytorch"]
    #: Tokens generated per run (text-generation models; their seq_lens are prompt lengths).
    new_tokens: PositiveInt = 64
    runs: PositiveInt = 20
    warmup: int = Field(3, ge=0)
    warm_loads: int = Field(3, ge=0)
    threads: PositiveInt | None = None
    provider: str | None = None
    input: str | None = None
    #: Accuracy floors for variants built for the run (default: the convert box's per-precision floors).
    min_cosine: float | None = Field(None, ge=0, le=1)
    min_agreement: float | None = Field(None, ge=0, le=1)
    out: Path = Path("gpux-bench")

    @field_validator("precisions")
    @classmethod
    def _precisions(cls, value: list[str]) -> list[str]:
        return [check_precision(v) for v in value]

    def entries(self) -> list[ModelEntry]:
        """Every model with its grid filled in from the plan's defaults."""
        out = []
        for m in self.models:
            e = ModelEntry(model=m) if isinstance(m, str) else m
            out.append(ModelEntry(model=e.model, batch_sizes=e.batch_sizes or self.batch_sizes,
                                  seq_lens=e.seq_lens or self.seq_lens, precisions=e.precisions or self.precisions,
                                  input=e.input or self.input))
        return out


def split_list(flag: str, text: str | None, kind: type = str) -> list[Any] | None:
    """``"1,4,16"`` -> [1, 4, 16]; a bad item is a UsageError naming the flag."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [kind(t) for t in items] or None
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not a comma-separated list of {kind.__name__}s",
                         hint=f"for example {flag} 1,4,16" if kind is int else f"for example {flag} a,b") from None


def build_plan(models: list[str], suite: Path | None, overrides: dict[str, Any]) -> Plan:
    """Merge a suite file (if any), the MODEL arguments and the flags given into one validated plan."""
    from pydantic import ValidationError

    from gpux.config import describe_errors, load_yaml

    base: dict[str, Any] = {}
    if suite is not None:
        base = load_yaml(suite, Plan, "docs/bench.md", "models, batch_sizes, ...").model_dump(exclude_unset=True)
    if models:
        base["models"] = models
    base.update({k: v for k, v in overrides.items() if v is not None})
    if not base.get("models"):
        raise UsageError("no model to benchmark", hint="give MODEL arguments or --suite suite.yml with models:")
    if base.get("baselines") == ["none"]:
        base["baselines"] = []
    try:
        return Plan.model_validate(base)
    except ValidationError as exc:
        raise UsageError(describe_errors(exc), hint="see gpux bench --help or docs/bench.md") from exc
