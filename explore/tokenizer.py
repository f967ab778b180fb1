"""The tokenizer of the `tiny` preset, and the check that a tokenizer can express every cluster name.

The tiny model is trained from scratch, so its tokenizer is too: a byte-level BPE learnt from the
catalog's own text (cluster names, keyword descriptions, the prompt's fixed words). Byte-level means
any text can be encoded, vLLM detokenizes it without help, and structured outputs can constrain it.
"""

from __future__ import annotations

from explore.prompts import ClusterVocabulary, PromptFormat

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def build_cluster_tokenizer(vocab: ClusterVocabulary, vocab_size: int = 1024):
    """A byte-level BPE tokenizer (transformers PreTrainedTokenizerFast) trained on the catalog's text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ValueError(
            f"vocab_size={vocab_size}: a byte-level tokenizer needs at least 300 (256 bytes + merges)."
        )
    corpus = [*vocab.names, *vocab.descriptions, *(["history: | next:"] * 4)]
    corpus += [f"{n} ({d})" for n, d in zip(vocab.names, vocab.descriptions, strict=True)]
    corpus += [PromptFormat("plain").answer(n) for n in vocab.names]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD)


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
