"""Reading the live version: one round trip per history key (its full field, back-off suffixes and the
global entry), the version's meta cached per version."""

from __future__ import annotations

import numbers
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field

from explore.cache.layout import (
    GLOBAL_FIELD,
    CacheError,
    CacheKeys,
    _text,
    decode_entry,
    lookup_fields,
    version_meta,
)

# KEYS[1]: the live key.  ARGV[1]: prefix, ARGV[2..]: fields.  Returns {version, value, ...} or {} when no
# version is live. The data key is built here from the live version rather than declared: it carries the
# same {ns} hash tag as KEYS[1], hence the same Redis Cluster slot.
_LOOKUP = """
local version = redis.call('GET', KEYS[1])
if not version then return {} end
local values = redis.call('HMGET', ARGV[1] .. version, unpack(ARGV, 2))
table.insert(values, 1, version)
return values
"""


@dataclass(frozen=True)
class CacheHit:
    """Cached novel clusters for one history key, best first."""

    version: str | None  # the live version read; None when none is live
    clusters: tuple[int, ...] = ()
    scores: tuple[float, ...] = ()
    level: str = "miss"  # exact | backoff | global | miss (see LEVELS)
    field: str | None = None  # the hash field the entry came from
    models: Mapping[str, str] = dataclass_field(
        default_factory=dict
    )  # the version's meta (read-only); {} on a miss


class CacheReader:
    """Looks up history keys in the live version: one round trip per call (plus one per new version).

    Args:
        client: a redis.Redis.
        namespace: the cache's key namespace.
        k: history key length K; a live version whose meta names another k is refused (CacheError).

    A Redis connection error propagates as redis.ConnectionError; the caller decides how to degrade.
    """

    def __init__(self, client, namespace: str = "explore", *, k: int):
        if k < 1:
            raise ValueError(f"k={k}: the history key length must be >= 1.")
        self.client = client
        self.keys = CacheKeys(namespace)
        self.k = k
        self._lookup = client.register_script(_LOOKUP)
        self._meta: tuple[str, Mapping[str, str]] | None = None  # (version, meta) of the last version read

    def lookup(
        self, history_key: Sequence[int], *, exclude: Iterable[int] = (), top: int | None = None
    ) -> CacheHit:
        """The first present entry of lookup_fields(history_key), without the key's and `exclude`'s clusters."""
        fields = self._fields(history_key)
        reply = self._lookup(keys=[self.keys.live], args=[self.keys.prefix, *fields])
        return self._hit(history_key, fields, reply, exclude, self._check_top(top))

    def lookup_global(self, *, exclude: Iterable[int] = (), top: int | None = None) -> CacheHit:
        """The global entry alone (level "global" or "miss"): for members with fewer than K clusters."""
        fields = [GLOBAL_FIELD]
        reply = self._lookup(keys=[self.keys.live], args=[self.keys.prefix, *fields])
        return self._hit((), fields, reply, exclude, self._check_top(top))

    def lookup_many(
        self,
        keys: Sequence[Sequence[int]],
        *,
        excludes: Sequence[Iterable[int]] | None = None,
        top: int | None = None,
    ) -> list[CacheHit]:
        """`lookup` for many keys in one pipelined round trip, in input order (excludes: one per key).

        Each hit comes from one version; hits of one call may come from two if a switch happens meanwhile.
        """
        excludes = [()] * len(keys) if excludes is None else list(excludes)
        if len(excludes) != len(keys):
            raise ValueError(f"excludes has {len(excludes)} items for {len(keys)} keys; give one per key.")
        top = self._check_top(top)
        fields = [self._fields(key) for key in keys]
        pipe = self.client.pipeline(transaction=False)
        for f in fields:
            self._lookup(keys=[self.keys.live], args=[self.keys.prefix, *f], client=pipe)
        replies = pipe.execute()
        return [self._hit(*args, top) for args in zip(keys, fields, replies, excludes, strict=True)]

    def _fields(self, history_key: Sequence[int]) -> list[str]:
        return _key_fields(history_key, self.k)

    @staticmethod
    def _check_top(top: int | None) -> int | None:
        return _check_top(top)

    def _hit(self, history_key, fields: list[str], reply: list, exclude: Iterable[int], top) -> CacheHit:
        found = _found(fields, reply)
        meta = self._version_meta(_text(reply[0])) if found else {}
        return _decode_hit(history_key, fields, reply, found, exclude, top, meta)

    def _version_meta(self, version: str) -> Mapping[str, str]:
        if self._meta is None or self._meta[0] != version:
            self._meta = (
                version,
                _checked_meta(version, version_meta(self.client, self.keys.namespace, version), self.k),
            )
        return self._meta[1]


class AsyncCacheReader:
    """CacheReader's `lookup` and `lookup_global` over a redis.asyncio client: the same one round trip
    and the same hits, awaited on the event loop (no thread per lookup).

    Args:
        client: a redis.asyncio.Redis (its connections belong to the event loop that first uses them).
        namespace, k: as CacheReader.
    """

    def __init__(self, client, namespace: str = "explore", *, k: int):
        if k < 1:
            raise ValueError(f"k={k}: the history key length must be >= 1.")
        self.client, self.keys, self.k = client, CacheKeys(namespace), k
        self._lookup = client.register_script(_LOOKUP)
        self._meta: tuple[str, Mapping[str, str]] | None = None

    async def lookup(
        self, history_key: Sequence[int], *, exclude: Iterable[int] = (), top: int | None = None
    ) -> CacheHit:
        fields, top = _key_fields(history_key, self.k), _check_top(top)
        reply = await self._lookup(keys=[self.keys.live], args=[self.keys.prefix, *fields])
        return await self._hit(history_key, fields, reply, exclude, top)

    async def lookup_global(self, *, exclude: Iterable[int] = (), top: int | None = None) -> CacheHit:
        fields, top = [GLOBAL_FIELD], _check_top(top)
        reply = await self._lookup(keys=[self.keys.live], args=[self.keys.prefix, *fields])
        return await self._hit((), fields, reply, exclude, top)

    async def _hit(
        self, history_key, fields: list[str], reply: list, exclude: Iterable[int], top
    ) -> CacheHit:
        found = _found(fields, reply)
        meta = {}
        if found:
            version = _text(reply[0])
            if self._meta is None or self._meta[0] != version:
                raw = await self.client.hgetall(self.keys.meta(version))
                meta = {_text(f): _text(v) for f, v in raw.items()}
                self._meta = (version, _checked_meta(version, meta, self.k))
            meta = self._meta[1]
        return _decode_hit(history_key, fields, reply, found, exclude, top, meta)


def _key_fields(history_key: Sequence[int], k: int) -> list[str]:
    key = tuple(history_key)
    if len(key) != k or any(isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 0 for c in key):
        raise ValueError(
            f"history_key={key!r}: give the member's last {k} cluster ids (ints >= 0), oldest first."
        )
    return lookup_fields(key)


def _check_top(top: int | None) -> int | None:
    if top is not None and top < 1:
        raise ValueError(f"top={top}: give a number of clusters >= 1, or None for all.")
    return top


def _found(fields: list[str], reply: list) -> tuple[str, bytes] | None:
    """(field, raw entry) of the first present field of a lookup's reply; None on a miss."""
    if not reply:
        return None
    return next(((f, v) for f, v in zip(fields, reply[1:], strict=True) if v is not None), None)


def _checked_meta(version: str, meta: dict[str, str], k: int) -> Mapping[str, str]:
    if "k" in meta and int(meta["k"]) != k:
        raise CacheError(
            f"live version {version} was built for k={meta['k']} but this reader has k={k}; "
            "build the reader with the cache's k."
        )
    return types.MappingProxyType(meta)


def _decode_hit(history_key, fields, reply, found, exclude: Iterable[int], top, meta) -> CacheHit:
    if not reply:
        return CacheHit(version=None)
    version = _text(reply[0])
    if found is None:
        return CacheHit(version=version)
    field_name, raw = found
    drop = set(history_key) | set(exclude)
    kept = [(c, s) for c, s in zip(*decode_entry(raw), strict=True) if c not in drop][:top]
    level = "global" if field_name == GLOBAL_FIELD else "exact" if field_name == fields[0] else "backoff"
    return CacheHit(
        version=version,
        clusters=tuple(c for c, _ in kept),
        scores=tuple(s for _, s in kept),
        level=level,
        field=field_name,
        models=meta,
    )
