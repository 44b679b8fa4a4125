"""The Hugging Face Hub through ``huggingface_hub``: only the files a conversion needs.

The client honours HF_HOME, HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE itself; files
land in its cache (the one place outside $GPUX_HOME gpux writes to). The revision
is resolved to a commit sha, which the bundle's manifest pins.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from gpux.errors import ModelNotFoundError, RegistryError

if TYPE_CHECKING:
    from gpux.registry import Located

#: What conversion reads. Weights: safetensors only, unless pickle is allowed.
ALLOW = ["config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
         "vocab.json", "merges.txt", "modules.json", "sentence_bert_config.json",
         "config_sentence_transformers.json", "*/config.json", "README.md", "*.safetensors",
         "model.safetensors.index.json"]
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
PICKLE = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"]


@contextlib.contextmanager
def map_hub_errors(repo: str, revision: str | None) -> Iterator[None]:
    """huggingface_hub's errors -> gpux's, each saying what to do next."""
    from huggingface_hub import errors as e

    where = f"{repo}@{revision}" if revision else repo
    try:
        yield
    except e.GatedRepoError as exc:
        raise RegistryError(f"{repo} is gated on the Hub: its terms must be accepted first",
                            hint="accept them on the model's page, then set HF_TOKEN") from exc
    except e.RevisionNotFoundError as exc:
        raise ModelNotFoundError(f"{repo} has no revision {revision!r}",
                                 hint="use a branch, tag or commit sha that exists") from exc
    except e.RepositoryNotFoundError as exc:
        raise ModelNotFoundError(f"no model {repo!r} on the Hub (or it is private)",
                                 hint="check the id; for a private model set HF_TOKEN") from exc
    except e.LocalEntryNotFoundError as exc:
        raise RegistryError(f"cannot reach the Hub for {where} and it is not in the local cache",
                            hint="check the network (or HF_ENDPOINT); unset HF_HUB_OFFLINE to download") from exc
    except e.HfHubHTTPError as exc:
        raise RegistryError(f"the Hub refused {where}: {str(exc).splitlines()[0]}",
                            hint="try again later, or check HF_ENDPOINT and HF_TOKEN") from exc
    except OSError as exc:
        raise RegistryError(f"could not download {where}: {exc}",
                            hint="check the network, free disk space and HF_HOME") from exc


def corrupt_files(folder: Path) -> list[Path]:
    """Snapshot files whose bytes do not hash to their LFS sha256.

    The client names an LFS blob in its cache by the sha256 the Hub announced
    (``X-Linked-Etag``) but does not check the bytes against it; this does.
    """
    bad = []
    for link in folder.rglob("*"):
        target = link.resolve()
        if link.is_symlink() and target.is_file() and _SHA256.match(target.name):
            h = hashlib.sha256()
            with open(target, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
            if h.hexdigest() != target.name:
                bad.append(link)
    return bad


def fetch(repo: str, revision: str | None = None, allow_pickle: bool = False,
          tqdm_class: type | None = None) -> Located:
    """Download (or reuse from the cache) the files of ``repo`` at ``revision``.

    Large files are checked against their sha256; a corrupt one is deleted and
    downloaded once more, and a second failure is a :class:`RegistryError`.
    ``tqdm_class`` is handed to the client for progress display.
    """
    from huggingface_hub import snapshot_download

    from gpux.registry import Located

    patterns = ALLOW + (PICKLE if allow_pickle else [])
    for attempt in (1, 2):
        with map_hub_errors(repo, revision):
            folder = Path(snapshot_download(repo, revision=revision, allow_patterns=patterns,
                                            tqdm_class=tqdm_class))
        bad = corrupt_files(folder)
        if not bad:
            break
        for link in bad:
            link.resolve().unlink(missing_ok=True)
            link.unlink(missing_ok=True)
        if attempt == 2:
            names = ", ".join(p.name for p in bad)
            raise RegistryError(f"{repo}: {names} arrived corrupted twice (sha256 mismatch); the bad copies were deleted",
                                hint="try again; if it persists the mirror at HF_ENDPOINT serves bad data")
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"{repo} has no config.json at {revision or 'main'}",
                                 hint="gpux converts transformers models; is this one?")
    return Located(repo, folder, {"kind": "hf", "repo": repo, "revision": revision or "main", "sha": folder.name})
