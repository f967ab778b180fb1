"""The main job: history keys -> novelty samples (vLLM) -> alignment scores -> best-of-n -> Redis.

    REDIS_URL=redis://host:6379/0 python -m jobs.best_of_n --catalog runs/<demo>/catalog \\
        --novelty runs/<demo>/novelty --alignment runs/<demo>/alignment --out runs/best-of-n
    python -m jobs.best_of_n ... --keys all --slots 4 --min-score 0.2
    RAY_ADDRESS=ray://head:10001 REDIS_URL=... python -m jobs.best_of_n ...   # on a cluster

One Ray Data pipeline (explore.pipeline.BulkPipeline, the one jobs.sample_novelty runs too): the key set (observed, all M^K, or a parquet file of keys) is sampled n times
per key by the novelty LLM in vLLM actors (each sample a valid cluster name, in-history ones dropped),
each distinct candidate is scored by the alignment model in torch actors (on a GPU when there is
one), the top --slots clusters per key are selected (ties by sample count, then id), and actors
write them into a new version of the Redis cache. When every key is written the driver adds the
back-off entries (key suffixes and the global best), then switches the live pointer in one atomic
step; the previous version stays for --keep-previous-s for rollback. A failure before the switch
leaves the previous version live (the partial one expires by itself).

Outputs in --out: selected/*.parquet (catalog.schemas.BEST_OF_N, one row per key: samples, scores,
what was cached; for audit), quarantine.parquet (key rows that were not K known ids), summary.json.
With REDIS_URL unset a local redis-server is started for the run and stopped after it.

Release gates (checked before anything is written, so a refusal leaves the live version as it is), from
the evaluations recorded with the models:
    novelty_validity       free-generation validity at t=1 (novelty.json report.evaluation.validity_free)
                           >= --min-novelty-validity (default 0.90, the papers' production gate)
    novelty_recall         recall@n of the next novel cluster minus the per-key frequency baseline's, measured
                           in the same evaluation, >= --novelty-recall-margin (default 0: at or above it);
                           the evaluation must have used this run's --decoding (else: not recorded)
    alignment_auc          held-out AUC of the alignment model minus the global-positive-rate baseline's
                           (alignment.json report.evaluation) >= --alignment-auc-margin (default 0: at or above)
A model without a recorded evaluation fails its gates. --force publishes anyway; the version's meta and
summary.json record the gates, their values and that they were forced.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from jobs.cli import job_parser
from jobs.common import merge_config, run_main
from jobs.sample_novelty import SamplingOptions, checked_model_info

OWN_FILES = ("selected",)  # what marks --out as an earlier output of this job (summary.json: many jobs)


class BestOfNFields(SamplingOptions):
    catalog: str = Field(description="catalog folder")
    novelty: str = Field(description="novelty model folder (python -m jobs.train_novelty)")
    alignment: str = Field(description="alignment model folder, or the output folder of jobs.train_alignment")
    keys: str = Field("observed", description="observed, all, or a parquet file with a history_key column")
    min_score: float = Field(0.0, ge=0, le=1, description="candidates scoring below are never cached")
    namespace: str = Field("explore", description="Redis key namespace")
    keep_previous_s: int = Field(
        7 * 86_400, ge=1, description="how long the replaced version stays for rollback, s"
    )
    staging_ttl_s: int = Field(
        86_400, ge=1, description="an unfinished version expires this long after its last write, s"
    )
    min_entries_ratio: float = Field(
        0.5, ge=0, le=1, description="refuse a version with fewer than this x the live version's entries"
    )
    force_publish: bool = Field(
        False, description="publish even when k, the catalog or the size differ from the live version"
    )
    allow_evictable_redis: bool = Field(
        False, description="publish into a Redis whose maxmemory-policy (allkeys-*) may evict live keys"
    )
    min_novelty_validity: float = Field(
        0.9,
        ge=0,
        le=1,
        description="release gate: the novelty model's recorded free-generation validity at t=1",
    )
    novelty_recall_margin: float = Field(
        0.0,
        ge=-1,
        le=1,
        description="release gate: novelty recall@n minus its frequency baseline's, at least",
    )
    alignment_auc_margin: float = Field(
        0.0,
        ge=-1,
        le=1,
        description="release gate: alignment held-out AUC minus the global-rate baseline's, at least",
    )
    force: bool = Field(
        False,
        description="publish even when a release gate fails (recorded in the version's meta and summary)",
    )
    fuse_stages: Literal["auto", "on", "off"] = Field(
        "auto",
        description="sample and score in one actor stage: auto (when there is no GPU), on, off",
    )
    alignment_actors: int = Field(1, ge=1, description="scoring replicas (separate stages only)")
    alignment_gpus: float | None = Field(
        None, ge=0, description="GPUs per scoring actor (default 0.5 with CUDA, sharing with vLLM)"
    )


class BestOfNConfig(BestOfNFields):
    out: str = Field("runs/best-of-n", description="output folder for the audit table and summary")


def model_version(folder: str | Path, info_file: str) -> str:
    """A short id of a trained model: the hash of its info file, which holds its config and report."""
    return hashlib.sha256((Path(folder) / info_file).read_bytes()).hexdigest()[:12]


class ReleaseGateError(ValueError):
    """The main job refused to publish: a model's recorded quality is below a release gate."""


@dataclass(frozen=True)
class Gate:
    """One release gate: `value` (None: not recorded) must be >= `threshold`."""

    name: str
    what: str  # the recorded figure, in words
    value: float | None
    threshold: float
    flag: str  # the option that sets the threshold
    source: str  # the file it was read from
    fix: str

    @property
    def passed(self) -> bool:
        return self.value is not None and self.value >= self.threshold - 1e-9

    def message(self) -> str:
        got = "not recorded" if self.value is None else f"{self.value:.4f}"
        return (
            f"release gate {self.name}: {self.what} is {got}, below the threshold {self.threshold:.4f} "
            f"({self.flag}; read from {self.source}). Fix: {self.fix}"
        )


def _get(d: dict, *path):
    for p in path:
        d = d.get(p) if isinstance(d, dict) else None
    return d


def release_gates(cfg: BestOfNFields, novelty_dir: str | Path, novelty_report: dict, align_dir: str | Path,
                  alignment_report: dict) -> list[Gate]:  # fmt: skip
    """The gates of the novelty and alignment models, from the evaluations recorded in their info files."""
    ev = novelty_report.get("evaluation") or {}
    validity = _get(ev, "validity_free", "t=1")
    recall, base = ev.get("recall_at_n"), ev.get("recall_frequency_baseline")
    # the recall of the decoding this run uses: an evaluation of another decoding measured other candidates
    evaluated = ev.get("decoding", "sample") if ev else None
    if evaluated is not None and evaluated != cfg.decoding:
        recall = None
    aev = alignment_report.get("evaluation") or {}
    auc, auc_base = _get(aev, "model", "auc"), _get(aev, "global_positive_rate", "auc")
    nov_src, align_src = str(Path(novelty_dir) / "novelty.json"), str(Path(align_dir) / "alignment.json")
    validity_fix = (
        "retrain the novelty model with retrieval augmentation and more steps, evaluated (`python -m "
        "jobs.train_novelty --catalog DIR --rag --max-steps 1000 --out DIR` reached 96.6% here, at its default learning rate 1e-3), or publish "
        "anyway with --force"
    )
    recall_fix = (
        f"evaluate the novelty model at this run's decoding (`python -m jobs.train_novelty --eval-decoding "
        f"{cfg.decoding}`; with `top` the tiny recipe's 1000-step model is above the frequency baseline, see "
        "README), lower --novelty-recall-margin deliberately, or publish anyway with --force"
    )
    return [
        Gate("novelty_validity", "the novelty model's free-generation validity at t=1", validity,
             cfg.min_novelty_validity, "--min-novelty-validity", nov_src, validity_fix),
        Gate("novelty_recall", "the novelty model's recall@n minus the frequency baseline's"
             + ("" if evaluated in (None, cfg.decoding)
                else f" at --decoding {cfg.decoding} (its evaluation used decoding {evaluated})"),
             None if recall is None or base is None else round(recall - base, 4),
             cfg.novelty_recall_margin, "--novelty-recall-margin", nov_src, recall_fix),
        Gate("alignment_auc", "the alignment model's held-out AUC minus the global-positive-rate baseline's",
             None if auc is None or auc_base is None else round(auc - auc_base, 4),
             cfg.alignment_auc_margin, "--alignment-auc-margin", align_src,
             "retrain the alignment model on more feedback or for longer (`python -m jobs.train_alignment`), "
             "or publish anyway with --force"),
    ]  # fmt: skip


def check_release_gates(gates: list[Gate], *, force: bool) -> dict:
    """The gates' record for the summary; a ReleaseGateError naming each failed gate unless `force`."""
    failed = [g for g in gates if not g.passed]
    if failed and not force:
        raise ReleaseGateError(
            "refusing to publish; the live cache version stays as it is.\n"
            + "\n".join("  " + g.message() for g in failed)
        )
    return {
        "passed": not failed,
        "forced": bool(failed) and force,
        "failed": [g.name for g in failed],
        "gates": {g.name: {"value": g.value, "threshold": g.threshold, "passed": g.passed} for g in gates},
    }


def gate_meta(record: dict) -> dict:
    """The gates as flat cache meta fields (Redis hash values are strings and numbers)."""
    meta = {
        "gates": "forced" if record["forced"] else "passed",
        "gates_failed": ",".join(record["failed"]),
    }
    for name, g in record["gates"].items():
        meta[f"gate_{name}"] = "" if g["value"] is None else g["value"]
        meta[f"gate_{name}_min"] = g["threshold"]
    return meta


def run(cfg: BestOfNFields, out: str | Path, redis_url: str) -> dict:
    """Run the pipeline on the connected Ray and publish into Redis at redis_url; returns the summary."""
    import redis

    from alignment import AlignmentModelInfo, AlignmentStage, alignment_model_folder, read_alignment_info
    from catalog import Catalog, ClusterVocabulary, check_output_folder, schemas, write_table
    from explore import (
        BulkPipeline,
        NoveltyModelInfo,
        SelectionConfig,
        backoff_entries,
        load_keys,
        read_model_info,
    )
    from explore.cache import CacheError, CacheWriter, SecretURL, encode_entry

    out = check_output_folder(out, OWN_FILES, job="jobs.best_of_n", what="best-of-n output")
    catalog = Catalog.load(cfg.catalog)
    vocab = ClusterVocabulary.from_clusters(catalog.clusters)
    align_dir = alignment_model_folder(cfg.alignment).resolve()
    novelty_info = checked_model_info(
        "--novelty", read_model_info(cfg.novelty), vocab, cfg.catalog, "python -m jobs.train_novelty"
    )
    align_info = checked_model_info(
        "--alignment", read_alignment_info(align_dir), vocab, cfg.catalog, "python -m jobs.train_alignment"
    )
    # before anything is written: a refused version leaves the live one as it is
    gates = check_release_gates(
        release_gates(cfg, Path(cfg.novelty).resolve(), novelty_info.report, align_dir, align_info.report),
        force=cfg.force,
    )
    retrieval_version = cfg.retrieval_version(cfg.novelty)
    selection = SelectionConfig(cfg.slots, cfg.min_score)
    keys, quarantined = load_keys(
        cfg.keys, catalog.histories, catalog.history_k, catalog.n_clusters, limit=cfg.limit, per_member=False
    )
    out.mkdir(parents=True, exist_ok=True)
    novelty_dir = str(Path(cfg.novelty).resolve())
    meta = {
        "k": catalog.history_k,
        "slots": cfg.slots,
        "samples_per_key": cfg.samples_per_key,
        "temperature": cfg.temperature,
        "top_k": cfg.top_k,
        "decoding": cfg.decoding,
        "min_score": cfg.min_score,
        "seed": cfg.seed,
        "keys": keys.num_rows,
        "novelty_model": model_version(novelty_dir, NoveltyModelInfo.FILE),
        "novelty_path": novelty_dir,
        "alignment_model": model_version(align_dir, AlignmentModelInfo.FILE),
        "alignment_path": str(align_dir),
        "catalog_signature": vocab.signature(),
        "novelty_retrieval": retrieval_version or "",
        **gate_meta(gates),
    }
    client = redis.Redis.from_url(redis_url)
    writer = CacheWriter(client, cfg.namespace, staging_ttl_s=cfg.staging_ttl_s)
    writer.begin(meta, force=cfg.force_publish, allow_evictable=cfg.allow_evictable_redis)
    t0 = time.perf_counter()
    try:
        pipe = BulkPipeline(
            keys,
            cfg.resources(
                scorer_actors=cfg.alignment_actors,
                scorer_gpus=cfg.alignment_gpus,
                fuse={"auto": None, "on": True, "off": False}[cfg.fuse_stages],
            ),
        )
        pipe.sample(
            novelty_dir,
            cfg.sampling(),
            vocab.signature(),
            share_gpu=True,
            rag=cfg.rag,
            retrieval=cfg.retrieval,
        )
        pipe.score(AlignmentStage, {"model": str(align_dir), "catalog_signature": vocab.signature()})
        pipe.select(selection)
        pipe.publish(
            SecretURL(redis_url), writer.version, namespace=cfg.namespace, staging_ttl_s=cfg.staging_ttl_s
        )
        result = pipe.run()
        t_save = time.perf_counter()
        selected_dir = result.save(out / "selected")
        save_s = time.perf_counter() - t_save
        # after the swap: a run that failed before leaves no file that would make a rerun refuse --out
        write_table(quarantined, out / "quarantine.parquet", schemas.KEY_QUARANTINE)
        pipeline_s = time.perf_counter() - t0

        table = result.table  # the pipeline's rows, as the driver got them: no parquet round trip
        t1 = time.perf_counter()
        backoff = backoff_entries(
            table["history_key"].to_pylist(),
            table["candidates"].to_pylist(),
            table["scores"].to_pylist(),
            selection,
        )
        writer.write((f, encode_entry(c, s)) for f, (c, s) in backoff.items())
        cached = sum(table["cached"].to_pylist())
        published = writer.commit(
            cached + len(backoff),
            keep_previous_s=cfg.keep_previous_s,
            min_entries_ratio=cfg.min_entries_ratio,
            force=cfg.force_publish,
        )
        finish_s = time.perf_counter() - t1
    except BaseException as exc:
        try:
            writer.abort()
        except Exception:  # noqa: BLE001  (the staging TTL removes what abort could not)
            pass
        cause = cache_error_in(exc)
        if cause is not None and cause is not exc:  # raised in a Ray actor: the user error, not Ray's wrapper
            raise CacheError(str(cause)) from None
        raise
    finally:
        client.close()
    wall_s = time.perf_counter() - t0
    summary = {
        **_sample_counts(table, cfg.slots),
        "key_set": cfg.keys,
        "quarantined_keys": quarantined.num_rows,
        "samples_per_key": cfg.samples_per_key,
        "keys_cached": cached,
        "backoff_entries": len(backoff),
        "entries": published.entries,
        "version": published.version,
        "previous_version": published.previous,
        "namespace": cfg.namespace,
        "publish_s": round(result.busy_s["write"] + finish_s, 3),
        "stage_busy_s": {k: round(v, 3) for k, v in result.busy_s.items()},
        "pipeline_s": round(pipeline_s, 2),  # the Ray Data run (actor start-up included) and the saves
        "run_s": round(result.wall_s, 2),  # of which the Ray Data run
        "save_s": round(save_s, 2),
        "wall_s": round(wall_s, 2),
        "keys_per_s": round(table.num_rows / wall_s, 2),
        "novelty_model": meta["novelty_model"],
        "alignment_model": meta["alignment_model"],
        "novelty_retrieval": retrieval_version,
        "release_gates": gates,
        "gpus_per_actor": {"novelty": pipe.novelty_gpus, "alignment": pipe.scorer_gpus},
        "fused_stages": pipe.fused,
        "novelty_actors": pipe.novelty_actors,  # resolved (--novelty-actors 0: auto)
        "keys_per_batch": pipe.batch_size,
        "out": str(selected_dir),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _sample_counts(table, slots: int) -> dict:
    import pyarrow.compute as pc

    n_samples = int(pc.sum(table["n_samples"]).as_py())
    invalid = int(pc.sum(table["n_invalid"]).as_py())
    in_hist = int(pc.sum(table["n_in_history"]).as_py())
    distinct_c = pc.list_value_length(table["candidates"]).to_numpy()
    selected_n = pc.list_value_length(table["selected"]).to_numpy()
    return {
        "keys": table.num_rows,
        "samples": n_samples,
        "valid_share": round(1 - invalid / n_samples, 4) if n_samples else None,
        "in_history_share": round(in_hist / n_samples, 4) if n_samples else None,
        "mean_distinct_candidates": round(float(distinct_c.mean()), 2),
        "mean_selected": round(float(selected_n.mean()), 2),
        "keys_with_fewer_than_slots": int((selected_n < slots).sum()),
    }


def cache_error_in(exc: BaseException):
    """The CacheError (a refused or failed publish step) behind `exc`, also one raised inside a Ray actor and
    wrapped by Ray Data; None when there is none."""
    from explore.cache import CacheError

    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, CacheError):
            return e
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
        if isinstance(getattr(e, "args", None), tuple):
            stack += [a for a in e.args if isinstance(a, BaseException)]
    # Ray Data re-raises a UDF's error without its chain; the remote traceback text keeps its message
    found = re.findall(r"^explore\.cache(?:\.\w+)?\.CacheError: (.+)$", str(exc), flags=re.MULTILINE)
    return CacheError(found[-1]) if found else None


def summary_lines(s: dict) -> list[str]:
    b = s["stage_busy_s"]
    return [
        f"best-of-n: {s['keys']} keys ({s['key_set']}) x {s['samples_per_key']} samples = {s['samples']}; valid "
        f"{s['valid_share']:.0%}, in-history dropped {s['in_history_share']:.1%}; {s['mean_distinct_candidates']} "
        f"distinct candidates and {s['mean_selected']} selected per key ({s['keys_with_fewer_than_slots']} keys "
        "with fewer than the slots)",
        f"published version {s['version']} to Redis namespace {s['namespace']!r}: {s['keys_cached']} key entries + "
        f"{s['backoff_entries']} back-off entries in {s['publish_s']:.2f}s; previous version "
        f"{s['previous_version']} kept for rollback",
        f"{s['wall_s']:.1f}s, {s['keys_per_s']} keys/s; stage busy time ({_layout(s)}): sampling {b['sample']:.1f}s, scoring "
        f"{b['score']:.1f}s, writing {b['write']:.2f}s; models novelty {s['novelty_model']}, alignment "
        f"{s['alignment_model']}; audit table in {s['out']}",
        gates_line(s["release_gates"]),
    ]


def _layout(s: dict) -> str:
    actors = s.get("novelty_actors", 1)
    stage = "one fused stage" if s.get("fused_stages") else "separate stages"
    return f"{stage}, {actors} sampling actor{'s' * (actors != 1)}, summed"


def gates_line(record: dict) -> str:
    """'release gates: passed (novelty_validity 0.93 >= 0.90, ...)' or which were forced."""
    parts = ", ".join(
        f"{name} {'n/a' if g['value'] is None else format(g['value'], '.3f')} "
        f"{'>=' if g['passed'] else '<'} {g['threshold']:.3f}"
        for name, g in record["gates"].items()
    )
    state = "passed" if record["passed"] else f"FAILED {', '.join(record['failed'])}, published with --force"
    return f"release gates: {state} ({parts})"


def main(argv: list[str] | None = None) -> None:
    args = job_parser(BestOfNConfig, __doc__).parse_args(argv)

    def body() -> int:
        from catalog import check_output_folder
        from jobs.services import ray_session, redis_service

        cfg = merge_config(BestOfNConfig, args)
        check_output_folder(cfg.out, OWN_FILES, job="jobs.best_of_n", what="best-of-n output")  # before Ray
        with ray_session(), redis_service() as r:
            s = run(cfg, cfg.out, r.url)
        for line in summary_lines(s):
            print(line)
        if r.server is not None:
            print("note: REDIS_URL is unset, so the cache lived in a redis-server started for this run only.")
        return 0

    run_main(body)


if __name__ == "__main__":
    main()
