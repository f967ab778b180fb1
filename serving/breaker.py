"""A circuit breaker for the endpoint's Redis reads.

closed: calls go through; `failures` consecutive failures open it.
open: calls are refused at once (the endpoint answers exploit-only, flagged degraded) for `cooldown_s`.
half-open: after the cool-down one trial call goes through; success closes the circuit, failure
opens it for another cool-down. So a dead or hung Redis costs one short timeout per cool-down, not
one per request, and the endpoint recovers by itself when Redis is back.
"""

from __future__ import annotations

import threading
import time


class CircuitBreaker:
    def __init__(self, failures: int = 3, cooldown_s: float = 2.0, clock=time.monotonic):
        if failures < 1 or cooldown_s <= 0:
            raise ValueError(
                f"CircuitBreaker failures={failures}, cooldown_s={cooldown_s}: need >= 1 and > 0."
            )
        self.failures, self.cooldown_s, self.clock = failures, cooldown_s, clock
        self._lock = threading.Lock()
        self._consecutive = 0
        self._opened_at: float | None = None
        self._trial = False  # a half-open trial call is in flight
        self.last_error: str | None = None
        self.opened = 0  # times the circuit opened

    @property
    def state(self) -> str:
        with self._lock:
            return self._state()

    def _state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self._opened_at >= self.cooldown_s else "open"

    def allow(self) -> bool:
        """May a call go through now? (In half-open state, only one trial at a time.)"""
        with self._lock:
            state = self._state()
            if state == "closed":
                return True
            if state == "half-open" and not self._trial:
                self._trial = True
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self._consecutive, self._opened_at, self._trial = 0, None, False

    def failure(self, error: BaseException | str) -> None:
        with self._lock:
            self.last_error = str(error)[:300]
            self._consecutive += 1
            if self._trial or self._consecutive >= self.failures:
                if self._opened_at is None or self._trial:
                    self.opened += 1
                self._opened_at, self._trial = self.clock(), False
