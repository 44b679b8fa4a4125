"""``gpux chat`` on a pseudo-terminal, driven as a person would: read what it prints, type, press Ctrl-C.

Every wait is bounded (a stuck chat fails the test, it never hangs it), and the child starts with SIGINT at
its default, as a terminal's shell starts it (pytest may itself run with SIGINT ignored, e.g. under nohup).
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from collections.abc import Callable


class PtyChat:
    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        import pty

        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: gpux chat on the terminal
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execvpe(sys.executable, [sys.executable, "-m", "gpux", "chat", *args], env)
        self.seen = b""

    def read_until(self, done: Callable[[bytes], bool], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.seen) and time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    self.seen += os.read(self.fd, 4096)
                except OSError:
                    break
        assert done(self.seen), self.seen.decode(errors="replace")

    def prompts(self, count: int, timeout: float = 120.0) -> None:
        """Wait until the ``>>> `` prompt was shown ``count`` times."""
        self.read_until(lambda s: s.count(b">>> ") >= count, timeout)

    def type(self, data: bytes) -> None:
        os.write(self.fd, data)

    def exit_status(self, timeout: float = 60.0) -> int | None:
        """The child's exit code once it ended (None if it did not within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done_pid, code = os.waitpid(self.pid, os.WNOHANG)
            if done_pid:
                return os.WEXITSTATUS(code)
            time.sleep(0.1)
        return None

    def close(self) -> None:
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass
        os.close(self.fd)
