"""GGUF files (llama.cpp's format) as model sources: turned once into a Hugging Face folder, then converted.

gpux converts Hugging Face transformers folders, so a ``.gguf`` is first
rebuilt as one with transformers' own GGUF reader (``from_pretrained(...,
gguf_file=...)``): config, tokenizer with its chat template, generation
config, and the weights dequantised to fp32 safetensors. Quantised blocks have
no ONNX export path; fp32 keeps parity checks meaningful against the same
weights PyTorch sees.

The folder is keyed by the file's content, not its path: it lives at
``$GPUX_HOME/sources/gguf-<16 hex of sha256>/``, so a copied or renamed file
reuses it and a re-downloaded one with new bytes does not. It is built in a
scratch folder under ``$GPUX_HOME/tmp`` and renamed into place, so a killed
pull leaves no half folder (only scratch, which ``gpux prune`` reclaims); one
that exists was complete when it landed and is reused without reconverting.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpux.errors import ConvertError, RegistryError

if TYPE_CHECKING:
    from gpux.registry import Located

MAGIC = b"GGUF"
#: What a finished folder holds; written last, so its presence means the build ran to the end.
RECORD = "gguf_source.json"
_NEEDED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", RECORD)
_EXTRA_HINT = "pip install 'gpux[convert]'"


def is_gguf(path: Path) -> bool:
    """Whether ``path`` is a file named ``*.gguf`` or one that starts with the GGUF magic."""
    path = Path(path)
    if not path.is_file():
        return False
    return path.suffix.lower() == ".gguf" or _magic(path) == MAGIC


def _magic(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(4)
    except OSError:
        return b""


def sources_root(store_root: Path | None = None) -> Path:
    """Where GGUF-derived folders live: ``<store root>/sources``."""
    from gpux.store.local import home

    return (store_root if store_root is not None else home()) / "sources"


def folder_for(sha256: str, store_root: Path | None = None) -> Path:
    """The content-addressed folder of the GGUF whose sha256 is ``sha256`` (it may not exist)."""
    return sources_root(store_root) / f"gguf-{sha256[:16]}"


def cached_folder(sha256: str, store_root: Path | None = None) -> Path | None:
    """The finished folder built from this GGUF, or None if there is none (or it was damaged since)."""
    folder = folder_for(sha256, store_root)
    if not all((folder / n).is_file() for n in _NEEDED):
        return None
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return folder if isinstance(record, dict) and record.get("sha256") == sha256 else None


def same_source(stored: dict[str, Any], record: dict[str, Any]) -> bool:
    """Whether a stored source record is the same GGUF content as ``record`` (wherever the file lies now)."""
    return stored.get("kind") == record.get("kind") == "gguf" and stored.get("sha256") == record.get("sha256")


def supported_architectures() -> list[str]:
    """GGUF ``general.architecture`` values this transformers reads (its legacy table and its new loader's)."""
    try:
        from transformers import modeling_gguf_pytorch_utils as legacy
    except ImportError:
        return []
    archs = set(legacy.GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}  # its config table's keys
    with contextlib.suppress(ImportError):
        from transformers.integrations.gguf.gguf_conversion_mapping import GGUF_ARCHS

        archs |= set(GGUF_ARCHS)
    return sorted(archs)


def readable(architecture: str, supported: list[str]) -> bool:
    """Whether transformers reads a GGUF of ``architecture`` (llama.cpp spells some names its own way)."""
    names = {architecture, architecture.replace("-", "_"), architecture.replace("moe", "_moe")}
    if architecture.startswith("t5"):  # t5encoder: read as t5 (or umt5)
        names.add("t5")
    return bool(names & set(supported))


def locate(path: Path, store_root: Path | None = None) -> Located:
    """The Hugging Face folder made from the GGUF at ``path``: reused when built before, else built now.

    Raises :class:`RegistryError` for a file that is not GGUF or is truncated,
    :class:`ConvertError` for an architecture transformers cannot read or a
    missing ``convert`` extra.
    """
    from gpux.registry import Located
    from gpux.registry.local import sanitize
    from gpux.store.local import Store, sha256_file

    path = Path(path).expanduser().resolve()
    magic = _magic(path)
    if magic != MAGIC:
        raise RegistryError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')",
                            hint="check the file: it may be another format renamed, or a failed download")
    sha = sha256_file(path)
    store = Store(store_root)
    with store.lock(f"gguf-{sha[:16]}"):  # a second pull of the same file waits, then reuses the folder
        folder = cached_folder(sha, store.root)
        if folder is None:
            folder = _build(path, sha, store)
    record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    source = {"kind": "gguf", "path": str(path), "sha256": sha, "file_type": record.get("file_type"),
              "architecture": record.get("architecture")}
    return Located(sanitize(path.stem), folder, source)


def read_header(path: Path) -> tuple[str, str, dict[str, Any]]:
    """(architecture, file type such as ``Q4_1``, other fields) read from the GGUF's metadata."""
    try:
        from gguf import GGUFReader, LlamaFileType
    except ImportError as exc:
        raise ConvertError("reading a GGUF file needs the gguf package (part of the convert extra)",
                           hint=_EXTRA_HINT) from exc
    try:
        reader = GGUFReader(path)
        fields = {k: f.contents() for k, f in reader.fields.items()
                  if k in ("general.architecture", "general.file_type", "general.name")
                  or k.startswith("tokenizer.ggml.") and k.endswith("_token_id")}
    except (ValueError, IndexError, KeyError, TypeError, OSError) as exc:
        raise RegistryError(f"{path} is truncated or damaged: the gguf reader failed ({exc})",
                            hint="download the file again; its sha256 should match the publisher's") from exc
    arch = str(fields.get("general.architecture") or "")
    if not arch:
        raise RegistryError(f"{path} has no general.architecture in its metadata",
                            hint="the file is not a model GGUF (or was written by a broken tool)")
    ftype = fields.get("general.file_type")
    try:
        file_type = LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_") if ftype is not None else "unknown"
    except (ValueError, TypeError):
        file_type = f"type-{ftype}"
    return arch, file_type, fields


def _build(path: Path, sha: str, store: Any) -> Path:
    """Build the folder in scratch and rename it into ``sources/``; the scratch is gone whatever happens."""
    arch, file_type, fields = read_header(path)
    supported = supported_architectures()
    if not supported:
        raise ConvertError("reading a GGUF file needs transformers (part of the convert extra)", hint=_EXTRA_HINT)
    if not readable(arch, supported):
        raise ConvertError(f"{path.name} is a GGUF of architecture {arch!r}, which transformers cannot read",
                           hint=f"transformers reads GGUF of: {', '.join(supported)}")
    final = folder_for(sha, store.root)
    scratch = store.scratch("gguf")
    try:
        _write_folder(path, scratch, fields)
        versions = _versions()
        (scratch / RECORD).write_text(json.dumps({
            "file": path.name, "sha256": sha, "architecture": arch, "file_type": file_type, **versions,
        }, indent=2) + "\n", encoding="utf-8")
        scratch.chmod(0o755)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # an incomplete or damaged folder (someone deleted files from it)
            shutil.rmtree(final)
        os.rename(scratch, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def _write_folder(path: Path, out: Path, fields: dict[str, Any]) -> None:
    """Load the GGUF with transformers (dequantised, fp32) and save it as a Hugging Face folder in ``out``."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    except ImportError as exc:
        raise ConvertError(f"reading a GGUF file needs the convert extra ({exc.name} is missing)",
                           hint=_EXTRA_HINT) from exc
    if importlib.util.find_spec("accelerate") is None:  # transformers refuses GGUF without it
        raise ConvertError("reading a GGUF file needs the convert extra (accelerate is missing)", hint=_EXTRA_HINT)
    src, name = str(path.parent), path.name
    with _quiet(), _as_convert_error(path):
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
        tokenizer.save_pretrained(out)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32,
                                                     quantization_config=GgufConfig(dequantize=True))
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:  # dequantised already; without this, save_pretrained refuses the model
            quantizer.remove_quantization_config(model)
        _eos_ids(model.generation_config, tokenizer, fields)
        model.save_pretrained(out, safe_serialization=True)
    _template_in_config(out)


def _eos_ids(generation_config: Any, tokenizer: Any, fields: dict[str, Any]) -> None:
    """Every id that ends a turn: the config's, the tokenizer's, and the GGUF's end-of-turn/message tokens."""
    ids: list[int] = []
    for value in (generation_config.eos_token_id, tokenizer.eos_token_id,
                  fields.get("tokenizer.ggml.eot_token_id"), fields.get("tokenizer.ggml.eom_token_id")):
        for i in value if isinstance(value, (list, tuple)) else [value]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    if ids:
        generation_config.eos_token_id = ids[0] if len(ids) == 1 else ids


def _template_in_config(out: Path) -> None:
    """Copy ``chat_template.jinja`` (where transformers 5 writes it) into tokenizer_config.json too.

    Older readers and tools that read only tokenizer_config.json then find it;
    the .jinja file stays, and both hold the same text.
    """
    jinja = out / "chat_template.jinja"
    cfg_path = out / "tokenizer_config.json"
    if not jinja.is_file() or not cfg_path.is_file():
        return
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["chat_template"] = jinja.read_text(encoding="utf-8")
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("gguf", "transformers"):
        with contextlib.suppress(PackageNotFoundError):
            out[f"{pkg}_version"] = version(pkg)
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No transformers progress bars while the CLI shows its own spinner."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _as_convert_error(path: Path) -> Iterator[None]:
    """transformers' loading failures as one :class:`ConvertError` naming the file."""
    try:
        yield
    except ConvertError:
        raise
    except ImportError as exc:
        raise ConvertError(f"reading {path.name} needs a package that is missing ({exc})", hint=_EXTRA_HINT) from exc
    except (ValueError, RuntimeError, KeyError, OSError, NotImplementedError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConvertError(f"transformers could not rebuild {path.name} as a model folder: {detail}",
                           hint="check that the file is complete; gpux reads GGUF through transformers") from exc
