"""The cache's key layout (documented in explore/cache/__init__.py), its entry encoding, version names, and
the read-only views of the versions a namespace holds."""

from __future__ import annotations

import math
import numbers
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

GLOBAL_FIELD = "*"
LEVELS = ("exact", "backoff", "global", "miss")
RESERVED_META = ("status", "created_ms", "entries", "live_ms", "base_version", "updated_ms")
EVICTING_POLICIES = ("allkeys-lru", "allkeys-lfu", "allkeys-random")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class CacheError(RuntimeError):
    """A publish, commit or rollback was refused; the message names what failed and the live version."""


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


@dataclass(frozen=True)
class CacheKeys:
    """The Redis key names of one namespace (see the module docstring)."""

    namespace: str = "explore"

    def __post_init__(self):
        if not _NAME.fullmatch(self.namespace):
            raise ValueError(
                f"namespace={self.namespace!r}: use letters, digits, '_', '.' or '-' (it goes inside a "
                "{hash tag} and key names)."
            )

    @property
    def live(self) -> str:
        return f"{{{self.namespace}}}:live"

    @property
    def previous(self) -> str:
        return f"{{{self.namespace}}}:previous"

    @property
    def versions(self) -> str:
        return f"{{{self.namespace}}}:versions"

    @property
    def prefix(self) -> str:
        """The data key of a version is prefix + version; its meta key adds ':meta'."""
        return f"{{{self.namespace}}}:v:"

    def data(self, version: str) -> str:
        return self.prefix + version

    def meta(self, version: str) -> str:
        return self.prefix + version + ":meta"


def key_field(key: Sequence[int]) -> str:
    """The hash field of a history key (or of a suffix of one): (3, 17) -> "3,17"."""
    return ",".join(str(int(c)) for c in key)


def lookup_fields(key: Sequence[int]) -> list[str]:
    """The fields a reader tries, in order: the full key, its suffixes from longest to shortest, "*"."""
    return [key_field(key[i:]) for i in range(len(key))] + [GLOBAL_FIELD]


def encode_entry(clusters: Sequence[int], scores: Sequence[float]) -> bytes:
    """b"17:0.81234;5:0.70112" for clusters (17, 5) with scores (0.812341, 0.70112), best first."""
    if len(clusters) != len(scores):
        raise ValueError(
            f"encode_entry: {len(clusters)} clusters {list(clusters)} but {len(scores)} scores {list(scores)}; "
            "give one score per cluster."
        )
    for c, s in zip(clusters, scores, strict=True):
        if isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 0:
            raise ValueError(f"encode_entry: cluster id {c!r} must be an int >= 0.")
        if not math.isfinite(s):
            raise ValueError(
                f"encode_entry: score {s!r} of cluster {c} is not finite; drop or fix the score."
            )
    return ";".join(f"{int(c)}:{s:.5f}" for c, s in zip(clusters, scores, strict=True)).encode()


def decode_entry(raw: bytes | str) -> tuple[list[int], list[float]]:
    """The (clusters, scores) of an encoded entry, best first."""
    text = _text(raw)
    if not text:
        return [], []
    try:
        pairs = [item.split(":") for item in text.split(";")]
        return [int(c) for c, _ in pairs], [float(s) for _, s in pairs]
    except ValueError as exc:
        raise ValueError(f"cache entry {text!r} is not 'cid:score;cid:score;...': {exc}") from exc


def new_version() -> str:
    """A version id sortable by time: "20250101T120000Z-3fa2c1" (UTC, then 6 random hex digits)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def live_version(client, namespace: str = "explore") -> str | None:
    raw = client.get(CacheKeys(namespace).live)
    return None if raw is None else _text(raw)


def list_versions(client, namespace: str = "explore") -> list[tuple[str, int]]:
    """(version, unix ms it last went live), newest first, for versions whose data still exists."""
    k = CacheKeys(namespace)
    ranked = [(_text(v), int(ms)) for v, ms in client.zrevrange(k.versions, 0, -1, withscores=True)]
    pipe = client.pipeline(transaction=False)
    for version, _ in ranked:
        pipe.exists(k.data(version))
    return [row for row, exists in zip(ranked, pipe.execute(), strict=True) if exists]


def version_meta(client, namespace: str, version: str) -> dict[str, str]:
    """The meta hash of a version ({} when it has none)."""
    return {_text(f): _text(v) for f, v in client.hgetall(CacheKeys(namespace).meta(version)).items()}
