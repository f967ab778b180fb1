"""The cluster vocabulary: cluster ids 0..M-1 with their names and keyword descriptions, as the LLMs see
them, and the one text of a history key that both LLMs read ("<name> (<description>) | ...").

The papers show clusters to an LLM as keyword descriptions, never as bare ids, and read a cluster back
by its name; a model and a catalog agree when their vocabularies' signatures match.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class ClusterVocabulary:
    """Cluster ids 0..M-1 with their unique names and keyword descriptions."""

    names: tuple[str, ...]
    descriptions: tuple[str, ...]

    def __post_init__(self):
        if len(self.names) != len(self.descriptions):
            raise ValueError(
                f"ClusterVocabulary: {len(self.names)} names but {len(self.descriptions)} descriptions."
            )
        if not self.names:
            raise ValueError("ClusterVocabulary: no clusters. Build the catalog first.")
        seen: dict[str, int] = {}
        for i, name in enumerate(self.names):
            if not name or name != name.strip() or "\n" in name:
                raise ValueError(
                    f"cluster {i} name={name!r}: a name must be non-empty, one line, without surrounding "
                    "whitespace (the model's answer is matched against it exactly)."
                )
            if name in seen:
                raise ValueError(f"cluster names must be unique: {name!r} is clusters {seen[name]} and {i}.")
            seen[name] = i
        object.__setattr__(self, "_index", seen)

    @classmethod
    def from_clusters(cls, clusters: pa.Table) -> ClusterVocabulary:
        order = clusters["cluster_id"].to_pylist()
        if order != list(range(len(order))):
            raise ValueError("clusters table: cluster_id must be 0..M-1 in order (catalog.schemas.CLUSTERS).")
        return cls(tuple(clusters["name"].to_pylist()), tuple(clusters["description"].to_pylist()))

    @property
    def size(self) -> int:
        return len(self.names)

    def id_of(self, name: str) -> int | None:
        """The cluster a text names exactly (surrounding whitespace ignored), or None."""
        return self._index.get(name.strip())  # type: ignore[attr-defined]

    def signature(self) -> str:
        """A short hash of the names in id order: a model and a catalog agree when these match."""
        return hashlib.sha256("\n".join(self.names).encode()).hexdigest()[:16]

    def check_key(self, key: Sequence[int], k: int, *, field: str = "history_key") -> tuple[int, ...]:
        """The key as a tuple of ints, or a ValueError naming the field, the value and the fix."""
        try:
            key_t = tuple(int(c) for c in key)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{field}={key!r}: must be a sequence of {k} cluster ids.") from exc
        if len(key_t) != k:
            raise ValueError(
                f"{field}={list(key_t)}: has {len(key_t)} clusters, the model reads K={k}. "
                f"Pass the member's last {k} clusters (shorter histories have no key)."
            )
        bad = [c for c in key_t if not 0 <= c < self.size]
        if bad:
            raise ValueError(
                f"{field}={list(key_t)}: unknown cluster id(s) {bad}; the catalog has ids 0..{self.size - 1}. "
                "Use keys built from the same catalog as the model."
            )
        return key_t


def history_text(vocab: ClusterVocabulary, key: Sequence[int]) -> str:
    """A history key as text, oldest first: "<name> (<description>) | <name> (<description>)"."""
    return " | ".join(f"{vocab.names[c]} ({vocab.descriptions[c]})" for c in key)
