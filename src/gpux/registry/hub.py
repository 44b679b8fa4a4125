"""The Hugging Face Hub through ``huggingface_hub``: only the files a conversion needs.

The client honours HF_HOME, HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE itself; files
land in its cache (the one place outside $GPUX_HOME gpux writes to). The revision
is resolved to a commit sha, which the bundle's manifest pins.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from gpux.errors import GpuxError, ModelNotFoundError, RegistryError, UsageError
from gpux.store.blobs import no_space

if TYPE_CHECKING:
    from gpux.registry import Located

#: What conversion reads. Weights: safetensors only, unless pickle is allowed.
ALLOW = ["config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
         "vocab.json", "merges.txt", "modules.json", "sentence_bert_config.json",
         "config_sentence_transformers.json", "*/config.json", "README.md", "*.safetensors",
         "model.safetensors.index.json"]
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
PICKLE = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"]
#: Bytes the client buffers before writing to its partial file: what a cut connection or a kill can lose.
CHUNK = 1 << 20
#: Transport errors (httpx's, by name) that mean the download was cut off: retry-able, not a bug.
_CUT = ("RemoteProtocolError", "ConnectError", "TimeoutException", "ReadError", "NetworkError")


#: huggingface_hub error (by name, most specific first) -> gpux error, message, what to do next.
_HUB_ERRORS: tuple[tuple[str, type[GpuxError], str, str], ...] = (
    ("GatedRepoError", RegistryError, "{repo} is gated on the Hub: its terms must be accepted first",
     "accept them on the model's page, then set HF_TOKEN"),
    ("RevisionNotFoundError", ModelNotFoundError, "{repo} has no revision {revision!r}",
     "use a branch, tag or full commit sha that exists"),
    ("RepositoryNotFoundError", ModelNotFoundError, "no model {repo!r} on the Hub (or it is private)",
     "check the id; for a private model set HF_TOKEN"),
    ("LocalEntryNotFoundError", RegistryError, "cannot reach the Hub for {where} and it is not in the local cache",
     "{offline_hint}"),
    ("HFValidationError", UsageError, "{repo!r} is not a valid Hugging Face id",
     "a Hub id looks like org/name; a local folder must exist and hold config.json"),
    ("HfHubHTTPError", RegistryError, "the Hub refused {where}: {detail}",
     "try again later, or check HF_ENDPOINT and HF_TOKEN"),
)


@contextlib.contextmanager
def map_hub_errors(repo: str, revision: str | None) -> Iterator[None]:
    """huggingface_hub's errors -> gpux's, each saying what to do next (one table, first match wins)."""
    from huggingface_hub import errors

    try:
        yield
    except Exception as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        fields = {"repo": repo, "revision": revision, "where": f"{repo}@{revision}" if revision else repo,
                  "detail": (str(exc).splitlines() or [type(exc).__name__])[0],
                  "offline_hint": "HF_HUB_OFFLINE is set: unset it to download" if offline else
                  "check the network and HF_ENDPOINT, and the id's spelling"}
        for name, gpux_error, message, hint in _HUB_ERRORS:
            foreign = getattr(errors, name, None)
            if isinstance(foreign, type) and isinstance(exc, foreign):
                raise gpux_error(message.format(**fields), hint=hint.format(**fields)) from exc
        if any(t.__name__ in _CUT for t in type(exc).__mro__):
            raise RegistryError(f"the download of {fields['where']} was cut off: {fields['detail']}",
                                hint="run the same command again: it resumes where it stopped") from exc
        if no_space(exc) is not None:
            raise RegistryError(f"no space to download {fields['where']} into the Hugging Face cache: {exc}",
                                hint="free disk space, or point HF_HOME at a disk with room") from exc
        if isinstance(exc, OSError):
            raise RegistryError(f"could not download {fields['where']}: {exc}",
                                hint="check the network, free disk space and HF_HOME") from exc
        raise


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

    from gpux.registry.resume import partials, resume_partials

    from huggingface_hub import constants

    # The client writes a download in DOWNLOAD_CHUNK_SIZE pieces (10 MiB by default): a connection cut or a kill
    # before the first piece leaves nothing on disk, so its retry (and any resume) starts from byte 0 again.
    constants.DOWNLOAD_CHUNK_SIZE = min(constants.DOWNLOAD_CHUNK_SIZE, CHUNK)
    patterns = ALLOW + (PICKLE if allow_pickle else [])
    resume_partials(repo, revision)  # a killed pull's half-downloaded files continue where they stopped
    for attempt in (1, 2):
        with map_hub_errors(repo, revision):
            folder = Path(snapshot_download(repo, revision=revision, allow_patterns=patterns,
                                            tqdm_class=tqdm_class))
        partials(repo)  # drops what a killed pull left of files that are complete now
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
