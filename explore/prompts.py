"""How the novelty LLM reads a history key and names a cluster.

The papers show clusters to the LLM as keyword descriptions, never as bare ids, and read its answer
back as a cluster name. A history key (c_1, ..., c_K), oldest first, becomes

    plain style (models trained here, no chat template):
        "history: <name c_1> (<description c_1>) | ... | <name c_K> (...)\\nnext:"   answer: " <name>"
    chat style (instruction-tuned models with a chat template):
        system + user message listing the K descriptions, the assistant's turn  answer: "<name>"

and the model's answer is the name of one cluster, followed by its end-of-sequence token.

With retrieval augmentation (`retrieved` > 0, explore.retrieval) the prompt also lists the clusters
members most often moved to next from this key in fresh logs, most frequent first:

    plain: "history: <c_1> (...) | <c_2> (...)\nrecent: <name r_1> | ... | <name r_R>\nnext:"
    chat:  the user message gains "Members with these clusters most often moved next to: r_1, ..., r_R."
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from catalog.vocabulary import ClusterVocabulary, history_text

STYLES = ("plain", "chat")
SYSTEM_PROMPT = (
    "You are the exploration engine of a recommender system. Interest clusters are described by "
    "keywords. Given the clusters a member engaged with most recently, name one cluster from the "
    "catalog that the member has not engaged with yet and is likely to enjoy."
)


@dataclass(frozen=True)
class PromptFormat:
    """Turns a history key into the model's prompt and reads a cluster name back from its answer.

    Args:
        style: "plain" for models trained here, "chat" for models with a chat template.
        k: history key length K the model reads.
        retrieved: clusters from the retrieval table listed in the prompt (0: no retrieval augmentation;
            a model trained with R reads R).
    """

    style: str = "plain"
    k: int = 2
    retrieved: int = 0

    def __post_init__(self):
        if self.style not in STYLES:
            raise ValueError(f"PromptFormat.style={self.style!r}: use one of {STYLES}.")
        if self.k < 1:
            raise ValueError(f"PromptFormat.k={self.k}: must be >= 1.")
        if self.retrieved < 0:
            raise ValueError(f"PromptFormat.retrieved={self.retrieved}: must be >= 0 (0: no retrieval).")

    @property
    def rag(self) -> bool:
        return self.retrieved > 0

    def prompt(
        self,
        vocab: ClusterVocabulary,
        key: Sequence[int],
        tokenizer=None,
        retrieved: Sequence[int] | None = None,
    ) -> str:
        """The prompt text for a checked history key; chat style needs the tokenizer's template.
        `retrieved`: the retrieval table's clusters for the key (at most `self.retrieved`), for a RAG format."""
        if self.rag and retrieved is None:
            raise ValueError(
                f"PromptFormat(retrieved={self.retrieved}): give the key's retrieved clusters (explore.retrieval)."
            )
        if not self.rag and retrieved:
            raise ValueError(
                "PromptFormat(retrieved=0) reads no retrieved clusters; the model was trained without."
            )
        names = [vocab.names[c] for c in (retrieved or ())][: self.retrieved]
        if self.style == "plain":
            recent = "\nrecent: " + " | ".join(names) if self.rag else ""
            return "history: " + history_text(vocab, key) + recent + "\nnext:"
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("PromptFormat(style='chat') needs a tokenizer with a chat template.")
        listing = "\n".join(f"{i + 1}. {vocab.names[c]}: {vocab.descriptions[c]}" for i, c in enumerate(key))
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": f"The member's last {len(key)} interest clusters, oldest first:\n{listing}\n"
                + (
                    f"Members with these clusters most often moved next to: {', '.join(names)}.\n"
                    if self.rag
                    else ""
                )
                + "Answer with the name of one new cluster only.",
            },
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def answer(self, name: str) -> str:
        """The text the model is trained to produce after the prompt (its end-of-sequence token follows)."""
        return " " + name if self.style == "plain" else name

    def to_dict(self) -> dict:
        d = {"style": self.style, "k": self.k}
        return {**d, "retrieved": self.retrieved} if self.rag else d  # older readers know style and k only


def tokenizer_texts(vocab: ClusterVocabulary) -> list[str]:
    """The prompt's fixed words and each plain-style answer: what the tiny preset's tokenizer learns from
    besides the cluster names and descriptions (lm.tokenizer.build_cluster_tokenizer)."""
    return ["history: | next:"] * 4 + [PromptFormat("plain").answer(n) for n in vocab.names]
