"""The endpoint's read path to the Redis cache of best-of-n clusters: latency-bound, never a 5xx.

Its own redis client with short connect and read timeouts (tens of ms) and no retry loop, behind a
circuit breaker (serving/breaker.py). A Redis error, a timeout or an open circuit gives None: the
caller answers exploit-only and flags the response `degraded`. The lookup itself is
explore.cache.CacheReader (one round trip for the key, its back-off suffixes and the global entry); the
endpoint's `lookup` awaits it on the event loop through a redis.asyncio client (AsyncCacheReader, one per
event loop: asyncio connections belong to the loop that opened them), with no thread hop per request.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Sequence

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from explore.cache import AsyncCacheReader, CacheHit, CacheReader, has_credentials, live_version, redact_url
from serving.breaker import CircuitBreaker

log = logging.getLogger("ray.serve")

__all__ = ["GuardedCache", "fast_client", "has_credentials", "redact_url"]


def fast_client(url: str, timeout_ms: float, *, asyncio_client: bool = False) -> redis.Redis:
    """A redis client for latency-bound reads: `timeout_ms` to connect and to read, no retries (a
    redis.asyncio one with asyncio_client=True)."""
    t = timeout_ms / 1000.0
    module, retry = (redis.asyncio, AsyncRetry) if asyncio_client else (redis, Retry)
    try:
        return module.Redis.from_url(
            url,
            socket_timeout=t,
            socket_connect_timeout=t,
            retry=retry(NoBackoff(), 0),
            health_check_interval=0,
        )
    except ValueError as exc:
        reason = "it does not parse" if "@" in url else str(exc)  # a parse error may quote part of a password
        raise ValueError(
            f"REDIS_URL={redact_url(url)!r} is not a valid Redis URL ({reason}); use redis://[:password@]host:port/db "
            "(a password holding '/', '?', '#' or '@' percent-encoded)."
        ) from None


class GuardedCache:
    """CacheReader behind a circuit breaker: `lookup` (async, for the endpoint) and `lookup_sync`."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        k: int,
        timeout_ms: float = 50.0,
        failures: int = 3,
        cooldown_s: float = 2.0,
    ):
        self.url = url
        self.timeout_ms = timeout_ms
        self.client = fast_client(url, timeout_ms)
        self._async: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> AsyncCacheReader
        self.namespace = namespace
        self.reader = CacheReader(self.client, namespace, k=k)
        self.breaker = CircuitBreaker(failures, cooldown_s)
        self.errors = 0  # lookups that failed (Redis down, slow, or an unexpected reply)
        self.bad_entries = 0  # entries that did not decode

    def lookup_sync(
        self, history_key: Sequence[int] | None, exclude: Sequence[int], top: int
    ) -> CacheHit | None:
        """The cached clusters for the key (the global entry when there is no key); None when degraded."""
        if not self.breaker.allow():
            return None
        try:
            if history_key is None:
                hit = self.reader.lookup_global(exclude=exclude, top=top)
            else:
                hit = self.reader.lookup(history_key, exclude=exclude, top=top)
        except Exception as exc:  # noqa: BLE001 - Redis down, slow or odd: degrade, never a 5xx
            return self._failed(exc, history_key)
        self.breaker.success()
        return hit

    async def lookup(
        self, history_key: Sequence[int] | None, exclude: Sequence[int], top: int
    ) -> CacheHit | None:
        """lookup_sync's answer, awaited on the running event loop (redis.asyncio, no thread)."""
        if not self.breaker.allow():
            return None
        try:
            reader = self._async_reader()
            if history_key is None:
                hit = await reader.lookup_global(exclude=exclude, top=top)
            else:
                hit = await reader.lookup(history_key, exclude=exclude, top=top)
        except Exception as exc:  # noqa: BLE001 - Redis down, slow or odd: degrade, never a 5xx
            return self._failed(exc, history_key)
        self.breaker.success()
        return hit

    def _failed(self, exc: Exception, history_key) -> CacheHit | None:
        """The answer to a lookup that raised: a miss when Redis answered with an entry that does not decode
        (a ValueError), else None (degraded), the failure counted by the circuit breaker."""
        if isinstance(exc, ValueError):
            self.breaker.success()
            self.bad_entries += 1
            log.error("cache entry for %s does not decode (answered as a miss): %s", history_key, exc)
            return CacheHit(version=None)
        self.errors += 1
        self.breaker.failure(exc)
        return None

    def _async_reader(self) -> AsyncCacheReader:
        loop = asyncio.get_running_loop()
        reader = self._async.get(loop)
        if reader is None:
            client = fast_client(self.url, self.timeout_ms, asyncio_client=True)
            reader = self._async[loop] = AsyncCacheReader(client, self.namespace, k=self.reader.k)
        return reader

    def state(self) -> dict:
        """For /readyz: the circuit, the live version (one PING-sized read when the circuit allows)."""
        out = {"url": redact_url(self.url), "namespace": self.namespace, "circuit": self.breaker.state}
        if self.breaker.allow():
            try:
                out["live_version"] = live_version(self.client, self.namespace)
                self.breaker.success()
            except Exception as exc:  # noqa: BLE001 - reported, never raised
                self.breaker.failure(exc)
            out["circuit"] = self.breaker.state
        out["reachable"] = "live_version" in out
        out["last_error"] = self.breaker.last_error
        out["errors"] = self.errors
        out["bad_entries"] = self.bad_entries
        return out
