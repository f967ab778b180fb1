"""How the novelty LLM reads a history key and names a cluster.

The papers show clusters to the LLM as keyword descriptions, never as bare ids, and read its answer
back as a cluster name. A history key (c_1, ..., c_K), oldest first, becomes

    plain style (models trained here, no chat template):
        "history: <name c_1> (<description c_1>) | ... | <name c_K> (...)\\nnext:"   answer: " <name>"
    chat style (instruction-tuned models with a chat template):
        system + user message listing the K descriptions, the assistant's turn  answer: "<name>"

and the model's answer is the name of one cluster, followed by its end-of-sequence token.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

STYLES = ("plain", "chat")
SYSTEM_PROMPT = (
    "You are the exploration engine of a recommender system. Interest clusters are described by "
    "keywords. Given the clusters a member engaged with most recently, name one cluster from the "
    "catalog that the member has not engaged with yet and is likely to enjoy."
)


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


@dataclass(frozen=True)
class PromptFormat:
    """Turns a history key into the model's prompt and reads a cluster name back from its answer.

    Args:
        style: "plain" for models trained here, "chat" for models with a chat template.
        k: history key length K the model reads.
    """

    style: str = "plain"
    k: int = 2

    def __post_init__(self):
        if self.style not in STYLES:
            raise ValueError(f"PromptFormat.style={self.style!r}: use one of {STYLES}.")
        if self.k < 1:
            raise ValueError(f"PromptFormat.k={self.k}: must be >= 1.")

    def prompt(self, vocab: ClusterVocabulary, key: Sequence[int], tokenizer=None) -> str:
        """The prompt text for a checked history key; chat style needs the tokenizer's template."""
        if self.style == "plain":
            return (
                "history: "
                + " | ".join(f"{vocab.names[c]} ({vocab.descriptions[c]})" for c in key)
                + "\nnext:"
            )
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("PromptFormat(style='chat') needs a tokenizer with a chat template.")
        listing = "\n".join(f"{i + 1}. {vocab.names[c]}: {vocab.descriptions[c]}" for i, c in enumerate(key))
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": f"The member's last {len(key)} interest clusters, oldest first:\n{listing}\n"
                "Answer with the name of one new cluster only.",
            },
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def answer(self, name: str) -> str:
        """The text the model is trained to produce after the prompt (its end-of-sequence token follows)."""
        return " " + name if self.style == "plain" else name

    def to_dict(self) -> dict:
        return {"style": self.style, "k": self.k}
