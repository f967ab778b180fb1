"""The baseline a user would write without vLLM: transformers `generate`, constrained to the cluster
names by a prefix trie over their answer tokens (`prefix_allowed_tokens_fn`), n samples per prompt."""

from __future__ import annotations

from pathlib import Path


class ConstrainedGenerate:
    """A novelty model folder under plain transformers. `sample(prompt_ids, n, temperature)` -> the
    sampled clusters (None for a sample that names none, which the constraint should never allow)."""

    def __init__(self, model_dir: Path, tokenizer, fmt, vocab):
        import torch
        from transformers import AutoModelForCausalLM

        from explore.tokenizer import answer_token_ids

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.tok = tokenizer
        answers = [tuple(answer_token_ids(tokenizer, fmt, name)) for name in vocab.names]
        self.max_new_tokens = max(len(a) for a in answers)
        self.cluster_of = {a[:-1]: c for c, a in enumerate(answers)}  # an answer's tokens, its eos dropped
        self.trie: dict[tuple[int, ...], set[int]] = {}
        for a in answers:
            for i in range(len(a)):
                self.trie.setdefault(a[:i], set()).add(a[i])

    def sample(self, prompt: list[int], n: int, temperature: float) -> list[int | None]:
        import torch

        tok, plen = self.tok, len(prompt)

        def allowed(_batch_id, ids):
            return sorted(self.trie.get(tuple(ids[plen:].tolist()), {tok.eos_token_id}))

        with torch.no_grad():
            out = self.model.generate(
                torch.tensor([prompt]), do_sample=True, temperature=temperature, top_k=0, num_return_sequences=n,
                max_new_tokens=self.max_new_tokens, prefix_allowed_tokens_fn=allowed,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            )  # fmt: skip
        stop = {tok.eos_token_id, tok.pad_token_id}
        return [self.cluster_of.get(tuple(t for t in row if t not in stop)) for row in out[:, plen:].tolist()]


def exact_name_logprobs(model_dir: Path, sampler, keys) -> list[dict[int, float]]:
    """The plain way to rank every cluster name for a key with transformers: one padded forward per key
    over prompt + each name + end token (the prompt recomputed for every name), summing the answer tokens'
    log-probabilities. The baseline of the sampler's `top` decoding (NoveltySampler.name_logprobs)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    pad = sampler.tokenizer.pad_token_id or 0
    out = []
    with torch.inference_mode():
        for key in keys:
            prompt = sampler.prompt_ids(key)
            clusters = [c for c in range(sampler.vocab.size) if c not in key]
            seqs = [prompt + sampler._answers[c] for c in clusters]
            ids = torch.full((len(seqs), max(map(len, seqs))), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, seq in enumerate(seqs):
                ids[i, : len(seq)], mask[i, : len(seq)] = torch.tensor(seq), 1
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
            row = {}
            for i, c in enumerate(clusters):
                answer = sampler._answers[c]
                steps = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(answer))
                row[c] = float(logp[i, steps, torch.tensor(answer)].sum())
            out.append(row)
    return out
