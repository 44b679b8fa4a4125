"""Rich progress for huggingface_hub downloads: a tqdm class that mirrors its counts into a Rich task.

huggingface_hub drives whatever tqdm class it is given (``snapshot_download(tqdm_class=...)``);
this one keeps tqdm's bookkeeping but renders nothing itself, and shows the bytes
written to disk as one Rich bar. Other bars it opens (file counts) stay hidden.
"""

from __future__ import annotations

import io
from typing import Any

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from tqdm import tqdm


def download_progress(console: Any) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    console=console, transient=True)


def rich_tqdm(progress: Progress, label: str) -> type[tqdm]:
    """A tqdm class bound to ``progress``; its byte bars become one Rich task named ``label``."""

    class RichTqdm(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._task: Any = None  # tqdm's __init__ already calls refresh()
            kwargs.pop("name", None)
            kwargs.update(file=io.StringIO(), disable=False, mininterval=0)
            super().__init__(*args, **kwargs)
            shown = self.unit == "B" and not str(self.desc).startswith("Downloading bytes")
            self._task = progress.add_task(label, total=self.total or None) if shown else None

        def _mirror(self) -> None:
            if self._task is not None:
                progress.update(self._task, completed=self.n, total=self.total or None)

        def update(self, n: float | None = 1) -> bool | None:
            out: bool | None = super().update(n)
            self._mirror()
            return out

        def refresh(self, *args: Any, **kwargs: Any) -> None:
            super().refresh(*args, **kwargs)
            self._mirror()

    return RichTqdm
