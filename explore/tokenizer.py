"""The novelty LLM's answers as tokens, and the check that a tokenizer can express every cluster name.

The tiny preset's tokenizer itself is built in lm.tokenizer (shared by both LLMs), from the catalog's
text and the prompt's words (explore.prompts.tokenizer_texts).
"""

from __future__ import annotations

from catalog.vocabulary import ClusterVocabulary
from explore.prompts import PromptFormat


def answer_token_ids(tokenizer, fmt: PromptFormat, name: str) -> list[int]:
    """Token ids of the answer naming `name`, ending with the end-of-sequence token."""
    return tokenizer(fmt.answer(name), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def check_expressible(tokenizer, vocab: ClusterVocabulary, fmt: PromptFormat) -> int:
    """Raise a ValueError naming the clusters whose names the tokenizer cannot write and read back.

    Returns the most tokens any answer takes (eos included) in its canonical tokenization.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError(
            "the tokenizer has no eos_token: the model could never end its answer. Set eos_token."
        )
    unk = tokenizer.unk_token_id
    bad, longest = [], 0
    for name in vocab.names:
        ids = tokenizer(fmt.answer(name), add_special_tokens=False)["input_ids"]
        back = tokenizer.decode(ids, skip_special_tokens=True)
        if (unk is not None and unk in ids) or back.strip() != name:
            bad.append((name, back))
        longest = max(longest, len(ids) + 1)
    if bad:
        name, back = bad[0]
        raise ValueError(
            f"the tokenizer cannot express {len(bad)} cluster name(s), e.g. {name!r} reads back as {back!r}. "
            "Use a tokenizer with byte fallback (byte-level BPE) or rename the clusters."
        )
    return longest


def encode_prompt(tokenizer, fmt: PromptFormat, vocab: ClusterVocabulary, key, retrieved=None) -> list[int]:
    """Prompt token ids; the same function feeds training and vLLM, so both see identical tokens.
    `retrieved`: the key's retrieved clusters, for a retrieval-augmented format (explore.retrieval)."""
    return tokenizer(fmt.prompt(vocab, key, tokenizer, retrieved), add_special_tokens=False)["input_ids"]
