"""The bulk pipeline, built once: history keys -> novelty samples -> scores -> best-of-n -> cache.

    pipe = BulkPipeline(keys, Resources(batch_size=64))
    pipe.sample(novelty_dir, SamplingConfig(n=20, temperature=1.5), signature, share_gpu=True)  # vLLM
    pipe.score(AlignmentStage, {"model": alignment_dir, "catalog_signature": ...})       # torch actors
    pipe.select(SelectionConfig(top_k=4))                                                # top-k per key
    pipe.publish(SecretURL(url), writer.version, namespace="explore")                      # Redis fields
    result = pipe.run()            # result.table: one row per key; result.busy_s: seconds per stage

One Ray Data dataset, lazily built; `run` materializes it once. jobs.sample_novelty stops after
`sample`, jobs.best_of_n runs all four steps. The scorer is passed in as a stage class (the alignment
model lives in alignment/, which explore/ does not import): any callable class that adds a `scores`
column (list<float32>, one per candidate) to NOVELTY_CANDIDATES rows fits.

Without a GPU the sampler and the scorer run fused by default: one actor stage that samples a batch and
then scores it (SampleScoreStage), each model using the actor's threads in turn, because two model
actors on the same few cores only take cycles from each other. With CUDA (or `Resources.fuse=False`)
they are separate stages with their own actors and GPU shares, overlapping batches.

How many sampling actors (`Resources.novelty_actors`, 0 = auto): with a GPU, or with separate stages on
the CPU, one; without a GPU, fused or sampling alone, one single-threaded actor per core of this machine
(at most MAX_AUTO_CPU_ACTORS, and no more than the Ray cluster's CPUs hold at `num_cpus` each). Much of a
small model's step is serial Python (vLLM's scheduler, the name constraint's masks, the scorer's
batching), so one actor with two threads keeps about 1.35 of two cores busy; two single-threaded actors
keep both (on the 2-core machine, 591 keys: 0.80 and 1.06 of the one-process run in two runs of `python
-m bench best-of-n`, against 0.58-0.79 with one two-thread actor in ad-hoc runs; README has the figures).

Keys are cut into blocks on the driver (a repartition task would need a whole CPU that the actors'
fractional shares leave free on a small machine): at most `batch_size` keys each, and with several
actors a multiple of the actor count of equal blocks, so the actors finish together. The output keeps
the input's row order whatever the actor count (Ray Data's preserve_order). Each model stage runs in
actors that load their model once; each output row carries its share of the batch's seconds in a
`_<stage>_s` column (dropped from `table`), so a run can tell where its time went. GPUs: with CUDA each vLLM actor takes a
whole GPU when it is the only model stage, half of one when the scorer shares it; the scorer takes half.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from catalog.io import replace_folder, staging_folder, write_parquet_synced
from explore.best_of_n import SelectionConfig, select_batch
from explore.sampler import SamplingConfig
from explore.stage import CacheWriteStage, NoveltyStage

# Ray starts a fractional-CPU actor with OMP_NUM_THREADS=1 and OpenMP reads it once, at process start; vLLM
# runs in-process in the actor and logs to stderr, where a quiet job's log file collects it
ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false"}


@dataclass(frozen=True)
class Resources:
    """How the pipeline's actors are sized. None GPUs: the defaults above (0 without CUDA)."""

    batch_size: int = 64  # at most this many keys per vLLM call, per scoring call and per cache write
    num_cpus: float = 0.5  # per model actor (fractional: a whole CPU each deadlocks 2-core machines)
    threads: int = 0  # torch/OpenMP threads per CPU actor (0: the node's cores / that stage's actors)
    kv_cache_mib: int = 256  # CPU KV cache per vLLM engine
    novelty_actors: int = 0  # 0: auto (see the module's docstring)
    novelty_gpus: float | None = None
    scorer_actors: int = 1
    scorer_gpus: float | None = None
    env: dict = field(default_factory=dict)  # extra environment for every actor (e.g. log routing)
    # sample and score in one actor stage (novelty_actors of them): None = when there is no GPU
    fuse: bool | None = None

    def __post_init__(self):
        for name in ("batch_size", "scorer_actors"):
            if getattr(self, name) < 1:
                raise ValueError(f"Resources.{name}={getattr(self, name)}: must be >= 1.")
        if self.novelty_actors < 0:
            raise ValueError(f"Resources.novelty_actors={self.novelty_actors}: must be >= 1, or 0 for auto.")
        if self.num_cpus <= 0:
            raise ValueError(f"Resources.num_cpus={self.num_cpus}: must be > 0.")


@dataclass
class PipelineResult:
    table: pa.Table  # one row per key: what the last stage emitted, timing columns dropped
    busy_s: dict[str, float]  # stage -> actor seconds spent in it
    wall_s: float

    def save(self, folder: str | Path, rows_per_file: int = 1_000_000) -> Path:
        """Write `table` as a parquet folder (part-NNNNN.parquet, fsynced), from the driver, which holds
        the rows already (a Ray write job would ship them back out), built beside `folder` and swapped in
        whole: a rerun never mixes runs."""
        folder = Path(folder)
        staging = staging_folder(folder)
        try:
            staging.mkdir(parents=True)
            for part, start in enumerate(range(0, max(self.table.num_rows, 1), rows_per_file)):
                rows = self.table.slice(start, rows_per_file)
                write_parquet_synced(rows, staging / f"part-{part:05d}.parquet")
            return replace_folder(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


class Timed:
    """Wraps a Ray Data stage class; each output row carries its share of the batch's seconds in `column`."""

    def __init__(self, stage: type, column: str, kwargs: dict):
        self.stage, self.column = stage(**kwargs), column

    def __call__(self, batch: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        out = self.stage(batch)
        per_row = (time.perf_counter() - t0) / max(out.num_rows, 1)
        return out.append_column(self.column, pa.array([per_row] * out.num_rows, pa.float64()))


class SampleScoreStage:
    """The novelty sampler and a scorer stage in one actor: each batch is sampled, then scored, and its rows
    carry both stages' seconds (`_sample_s`, `_score_s`), as the separate stages' would."""

    def __init__(self, novelty: dict, scorer: type, scorer_kwargs: dict):
        self.sample = NoveltyStage(**novelty)
        self.score = scorer(**scorer_kwargs)

    def __call__(self, batch: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        candidates = self.sample(batch)
        t1 = time.perf_counter()
        out = self.score(candidates)
        t2 = time.perf_counter()
        n = max(out.num_rows, 1)
        for column, seconds in (("_sample_s", t1 - t0), ("_score_s", t2 - t1)):
            out = out.append_column(column, pa.array([seconds / n] * out.num_rows, pa.float64()))
        return out


def timed(stage: type) -> type:
    """Timed, named for the stage it wraps (TimedNoveltyStage): Ray names its operators, workers and log
    prefixes after the class, so logs and progress bars still say which stage a line is from."""
    return type(f"Timed{stage.__name__}", (Timed,), {"__doc__": f"{stage.__name__}, timed (Timed)."})


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


MAX_AUTO_CPU_ACTORS = 4  # auto never starts more CPU sampling actors (each holds an engine and a model)
LIGHT_STAGES_CPUS = 0.2  # what the selection and the cache writer hold beside the model actors


def balanced_batch(n_keys: int, batch_size: int, actors: int) -> int:
    """Keys per block: at most batch_size, and with several actors equal blocks in a multiple of the actor
    count, so no actor is left with a last block while the others wait (591 keys, 64, 2 actors: 60)."""
    if actors <= 1:
        return batch_size
    blocks = actors * -(-n_keys // (actors * batch_size))
    return max(1, -(-n_keys // blocks))


class BulkPipeline:
    """keys (catalog.schemas.KEYS rows) -> the steps added, in order; nothing runs before `run`."""

    def __init__(self, keys: pa.Table, resources: Resources | None = None):
        import ray

        if keys.num_rows == 0:
            raise ValueError("BulkPipeline: no keys to run on.")
        self.resources = r = resources or Resources()
        self.keys = keys
        self.stages: list[str] = []
        self._cpu_demand: list[tuple[str, float]] = []  # (stage, CPUs its actor pool holds while it runs)
        self._cuda = _cuda()
        self._pending_sample: dict | None = None  # the sampler's arguments while a scorer may fuse with it
        self.novelty_actors = r.novelty_actors or self._auto_novelty_actors()
        self.batch_size = balanced_batch(keys.num_rows, r.batch_size, self.novelty_actors)
        step = self.batch_size
        self.ds = ray.data.from_arrow([keys.slice(i, step) for i in range(0, keys.num_rows, step)])

    def _auto_novelty_actors(self) -> int:
        """Sampling actors when Resources.novelty_actors is 0: one with a GPU or with separate stages on the
        CPU; else one single-threaded actor per core, as many as the cluster's CPUs hold (module docstring)."""
        import ray

        if self._cuda or not self.fused:
            return 1
        cpus = ray.cluster_resources().get("CPU", 0.0) - LIGHT_STAGES_CPUS
        fit = int(cpus / self.resources.num_cpus + 1e-9)
        return max(1, min(MAX_AUTO_CPU_ACTORS, os.cpu_count() or 1, fit))

    def _gpus(self, given: float | None, share: bool) -> float:
        if given is not None:
            return given
        return (0.5 if share else 1.0) if self._cuda else 0.0

    @property
    def fused(self) -> bool:
        """Whether a scorer added after `sample` shares the sampler's actors (Resources.fuse)."""
        return not self._cuda if self.resources.fuse is None else self.resources.fuse

    def _actors(
        self, stage_cls: type, name: str, kwargs: dict, actors: int, gpus: float, *, wrap: bool = True
    ) -> None:
        import ray

        r = self.resources
        threads = r.threads or (0 if gpus else max(1, (os.cpu_count() or 1) // actors))
        env = {**ENGINE_ENV, **r.env, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        timed_kwargs = {"stage": stage_cls, "column": f"_{name}_s", "kwargs": kwargs}
        self.ds = self.ds.map_batches(
            timed(stage_cls) if wrap else stage_cls,
            fn_constructor_kwargs=timed_kwargs if wrap else kwargs,
            batch_size=self.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=r.num_cpus,
            num_gpus=gpus,
            runtime_env={"env_vars": env},
        )
        self.stages.append(name)
        self._cpu_demand.append(
            (f"{stage_cls.__name__} x {actors} (--num-cpus {r.num_cpus:g} each)", r.num_cpus * actors)
        )

    def sample(
        self,
        model: str | Path,
        sampling: SamplingConfig,
        catalog_signature: str,
        *,
        share_gpu: bool = False,
        rag: bool = False,
        retrieval: str | Path | None = None,
    ) -> BulkPipeline:
        """n constrained samples per key from the novelty model folder, in vLLM actors; `share_gpu`: a scorer
        follows and shares the GPU (vLLM then takes half of one by default); `rag`, `retrieval`: prompts with
        retrieved clusters (NoveltySampler's arguments)."""
        r = self.resources
        self.novelty_gpus = self._gpus(r.novelty_gpus, share=share_gpu)
        kwargs = {
            "model": str(Path(model).resolve()),
            "sampling": asdict(sampling),
            "engine": {"kv_cache_memory_bytes": r.kv_cache_mib << 20},
            "catalog_signature": catalog_signature,
            "rag": rag,
            "retrieval": None if retrieval is None else str(Path(retrieval).resolve()),
        }
        if self.fused and share_gpu:  # a scorer follows: added with it, in the same actors
            self._pending_sample = kwargs
        else:
            self._actors(NoveltyStage, "sample", kwargs, self.novelty_actors, self.novelty_gpus)
        return self

    def _flush_sample(self) -> None:
        """Add a held-back sampler as its own stage (no scorer came to fuse with it)."""
        if self._pending_sample is not None:
            kwargs, self._pending_sample = self._pending_sample, None
            self._actors(NoveltyStage, "sample", kwargs, self.novelty_actors, self.novelty_gpus)

    def score(self, stage: type, kwargs: dict) -> BulkPipeline:
        """Scores of each key's candidates by `stage(**kwargs)` (e.g. alignment.stage.AlignmentStage); fused
        with the sampler in its actors (self.novelty_actors, the sampler's GPU share) when `fused`."""
        r = self.resources
        if self._pending_sample is not None:
            fused = {"novelty": self._pending_sample, "scorer": stage, "scorer_kwargs": kwargs}
            self._pending_sample = None
            self.scorer_gpus = 0.0
            self.novelty_gpus = self._gpus(r.novelty_gpus, share=False)
            self._actors(
                SampleScoreStage, "sample", fused, self.novelty_actors, self.novelty_gpus, wrap=False
            )
            self.stages.append("score")
            return self
        self.scorer_gpus = self._gpus(r.scorer_gpus, share=True)
        self._actors(stage, "score", kwargs, r.scorer_actors, self.scorer_gpus)
        return self

    def select(self, selection: SelectionConfig) -> BulkPipeline:
        """The top `top_k` scored candidates per key, at or above min_score (explore.best_of_n)."""
        self._flush_sample()
        self.ds = self.ds.map_batches(
            select_batch,
            fn_kwargs={"top_k": selection.top_k, "min_score": selection.min_score},
            batch_format="pyarrow",
            num_cpus=0.1,  # light: a whole CPU here would wait for the actors' share on small machines
        )
        self.stages.append("select")
        self._cpu_demand.append(("the selection", 0.1))
        return self

    def publish(self, url, version: str, *, namespace: str = "explore", staging_ttl_s: int = 86_400):
        """Write each key's selection into cache `version` (begun by the driver's CacheWriter, which also
        commits it); `url` is a SecretURL, so Ray never shows the password in an actor's arguments."""
        import ray

        self._flush_sample()
        kwargs = {"url": url, "version": version, "namespace": namespace, "staging_ttl_s": staging_ttl_s}
        self.ds = self.ds.map_batches(
            timed(CacheWriteStage),
            fn_constructor_kwargs={"stage": CacheWriteStage, "column": "_write_s", "kwargs": kwargs},
            compute=ray.data.ActorPoolStrategy(size=1),
            batch_size=self.batch_size,
            batch_format="pyarrow",
            num_cpus=0.1,
        )
        self.stages.append("write")
        self._cpu_demand.append(("the cache writer", 0.1))
        return self

    def _check_cpus(self) -> None:
        """Every actor pool of a streaming pipeline must fit at once: otherwise a later stage's actor cannot
        be placed until an earlier stage's actor exits (with 2 CPUs per model actor on a 2-CPU machine the
        cache writer stayed pending for a whole 10^4-key run while its input queue grew), and once the
        earlier stage blocks on that queue the run can stall. On one node that is an error before anything
        runs; on a multi-node cluster (which may autoscale) a warning."""
        import logging

        import ray

        need = sum(c for _, c in self._cpu_demand)
        have = ray.cluster_resources().get("CPU", 0.0)
        if need <= have + 1e-9:
            return
        parts = " + ".join(f"{name}: {c:g}" for name, c in self._cpu_demand)
        message = (
            f"the pipeline's actors need {need:g} CPUs at once ({parts}) but the Ray cluster has {have:g}: a "
            "later stage's actor would wait for an earlier one to exit while the earlier one's output queues "
            "up for it (the run can stall). Lower --num-cpus per model actor (default 0.5) or the actor counts, or add CPUs."
        )
        if len([n for n in ray.nodes() if n.get("Alive")]) <= 1:
            raise ValueError(message)
        logging.getLogger(__name__).warning("%s (going on: the cluster may scale up)", message)

    def run(self) -> PipelineResult:
        """Materialize the dataset; its rows come back to the driver once, as one table."""
        import ray

        self._flush_sample()
        self._check_cpus()
        t0 = time.perf_counter()
        # several actors finish blocks out of order: the rows still come back in the keys' order
        self.ds.context.execution_options.preserve_order = True
        ds = self.ds.materialize()
        table = pa.concat_tables(ray.get(ds.to_arrow_refs()), promote_options="permissive")
        timed = [s for s in self.stages if f"_{s}_s" in table.column_names]
        busy = {s: float(pc.sum(table[f"_{s}_s"]).as_py() or 0.0) for s in timed}
        table = table.drop_columns([f"_{s}_s" for s in timed])
        return PipelineResult(table, busy, time.perf_counter() - t0)
