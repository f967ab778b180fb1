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
