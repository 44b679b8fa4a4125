"""Admission: how many requests are inside the app at once, and a short bounded wait for the rest.

Below the limit admitting is a counter increment. At the limit a request waits, first come first
served, for a slot handed over by a finishing request, at most ``wait_s``; at most ``max_waiting``
requests wait, and any past that (or a waiter whose time ran out) is refused at once (the caller
answers 429). The wait is what keeps goodput up under clients that retry without backing off:
refused at once, 1,000 of them spin thousands of 429s a second and take the CPU from the requests
being served; held for a moment, most of them get a slot, and the spinning is bounded.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Admission:
    """Single event loop only (the server's)."""

    def __init__(self, limit: int, max_waiting: int, wait_s: float) -> None:
        self.limit, self.max_waiting, self.wait_s = limit, max_waiting, wait_s
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[bool]] = deque()

    async def enter(self) -> bool:
        """True with a slot held (call :meth:`leave` after), False if refused."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return True
        if len(self._waiters) >= self.max_waiting or self.wait_s <= 0:
            return False
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(fut)
        timer = loop.call_later(self.wait_s, self._expire, fut)
        try:
            return await fut  # True: a finishing request handed its slot over
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.result():
                self.leave()  # the slot arrived as we were cancelled: pass it on
            raise
        finally:
            timer.cancel()
            if not fut.done() or fut.cancelled():
                self._forget(fut)

    def leave(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(True)  # the slot goes straight to the oldest waiter
                return
        self.in_flight -= 1

    def _expire(self, fut: asyncio.Future[bool]) -> None:
        if not fut.done():
            fut.set_result(False)
        self._forget(fut)

    def _forget(self, fut: asyncio.Future[bool]) -> None:
        try:
            self._waiters.remove(fut)
        except ValueError:
            pass
