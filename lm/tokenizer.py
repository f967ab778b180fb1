"""The tokenizer of the `tiny` preset, shared by both LLMs.

The tiny model is trained from scratch, so its tokenizer is too: a byte-level BPE learnt from the
catalog's own text (cluster names, keyword descriptions) and the model's fixed words. Byte-level means
any text can be encoded, vLLM detokenizes it without help, and structured outputs can constrain it.
"""

from __future__ import annotations

from collections.abc import Sequence

from catalog.vocabulary import ClusterVocabulary

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def build_cluster_tokenizer(vocab: ClusterVocabulary, vocab_size: int = 1024, texts: Sequence[str] = ()):
    """A byte-level BPE tokenizer (transformers PreTrainedTokenizerFast) trained on the catalog's text
    (cluster names, descriptions, "<name> (<description>)") and `texts`, the model's own fixed words (e.g.
    explore.prompts.tokenizer_texts)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ValueError(
            f"vocab_size={vocab_size}: a byte-level tokenizer needs at least 300 (256 bytes + merges)."
        )
    prompt_words, answers = _split_texts(texts)
    corpus = [*vocab.names, *vocab.descriptions, *prompt_words]
    corpus += [f"{n} ({d})" for n, d in zip(vocab.names, vocab.descriptions, strict=True)]
    corpus += answers
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


def _split_texts(texts: Sequence[str]) -> tuple[list[str], list[str]]:
    """The caller's texts in the corpus order the tokenizer was first trained with: fixed words before the
    "<name> (<description>)" lines, answers (texts starting with a space) after them. BPE merges depend on
    the order, so this keeps the tiny preset's tokenizer what it was."""
    return [t for t in texts if not t.startswith(" ")], [t for t in texts if t.startswith(" ")]
