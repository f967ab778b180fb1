"""Join the endpoint's impression log with its engagement-events log into a feedback log.

    python -m jobs.join_feedback --impressions RUN/serve/impressions --events RUN/serve/events --out RUN/joined
    python -m jobs.join_feedback ... --engine ray --buckets 64     # large logs, on a Ray cluster

Every served item becomes one FEEDBACK_LOG row (no event: a non-engagement); an item's events are merged
(flags OR-ed, longest dwell). Events with no impression, repeats of an event, events received more than
--late-s after the impression, and impressions logged twice are set aside with the reason (catalog.join).

Engines: `pyarrow` joins in this process; `ray` hash-partitions both logs by request id into --buckets
buckets (Ray tasks, one per log part), then joins each bucket in a Ray task with the same function. All
rows of a request land in one bucket, and the join does not depend on row order, so both engines give
the same rows (tested). `auto` picks Ray above --ray-threshold-mib of log parts.

Outputs in --out: feedback/part-*.parquet (FEEDBACK_LOG: what jobs.train_alignment and jobs.train_ranker
read), quarantine.parquet (EVENT_QUARANTINE), summary.json. The folder is built beside --out and swapped in
whole; an --out that holds files but no feedback/ folder is refused before any work.
"""

from __future__ import annotations

import json
import shutil
import time
import zlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.cli import job_parser
from jobs.common import merge_config, run_main

OWN_FILES = ("feedback",)


class JoinConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    impressions: str = Field(description="the endpoint's impression log folder (IMPRESSION_LOG parts)")
    events: str = Field(description="the endpoint's engagement-events log folder (ENGAGEMENT_EVENTS parts)")
    out: str = Field("runs/joined", description="output folder: feedback/ parts, quarantine, summary")
    late_s: float = Field(
        86_400.0, ge=0, description="events received later than this after the impression are set aside, s"
    )
    engine: Literal["auto", "pyarrow", "ray"] = Field("auto", description="where the join runs")
    buckets: int = Field(16, ge=1, description="ray engine: request-id buckets joined in parallel")
    ray_threshold_mib: int = Field(256, ge=0, description="engine auto: Ray above this much log data, MiB")


def _bucket_of(request_ids, buckets: int):
    import pyarrow as pa

    return pa.array([zlib.crc32(r.encode()) % buckets for r in request_ids.to_pylist()], pa.int32())


def _split_part(path: str, kind: str, buckets: int, scratch: str) -> int:
    """Ray task: one log part's rows, written into the bucket folders under `scratch` (one file per bucket)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if table.num_rows == 0:
        return 0
    bucket = _bucket_of(table["request_id"], buckets)
    name = Path(path).stem
    for b in sorted(set(bucket.to_pylist())):
        folder = Path(scratch) / kind / f"b{b:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.filter(pc.equal(bucket, b)), folder / f"{name}.parquet")
    return table.num_rows


def _join_bucket(scratch: str, bucket: int, late_s: float):
    """Ray task: the join of one bucket's impressions and events."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from catalog import join_feedback, schemas

    def read(kind: str, schema):
        files = sorted((Path(scratch) / kind / f"b{bucket:05d}").glob("*.parquet"))
        return (
            pa.concat_tables([pq.read_table(f).cast(schema) for f in files])
            if files
            else schema.empty_table()
        )

    return join_feedback(
        read("impressions", schemas.IMPRESSION_LOG), read("events", schemas.ENGAGEMENT_EVENTS), late_s=late_s
    )


def join_on_ray(impression_parts, event_parts, *, buckets: int, late_s: float, scratch: Path):
    """(feedback, quarantine, stats) of the bucketed join on the connected Ray (paths on shared storage)."""
    import pyarrow as pa
    import ray

    from catalog import JOIN_REASONS

    split = ray.remote(num_cpus=0.5)(_split_part)
    ray.get([split.remote(str(p), "impressions", buckets, str(scratch)) for p in impression_parts]
            + [split.remote(str(p), "events", buckets, str(scratch)) for p in event_parts])  # fmt: skip
    join = ray.remote(num_cpus=0.5)(_join_bucket)
    parts = ray.get([join.remote(str(scratch), b, late_s) for b in range(buckets)])
    feedback = pa.concat_tables([p[0] for p in parts]).sort_by(
        [("timestamp", "ascending"), ("request_id", "ascending"), ("position", "ascending")]
    )
    quarantine = pa.concat_tables([p[1] for p in parts]).sort_by(
        [
            ("reason", "ascending"),
            ("request_id", "ascending"),
            ("item_id", "ascending"),
            ("received_ms", "ascending"),
        ]
    )
    stats = {
        k: sum(p[2][k] for p in parts)
        for k in ("impressions", "events", "engaged_impressions", "feedback_rows")
    }
    stats["quarantined"] = {r: sum(p[2]["quarantined"][r] for p in parts) for r in JOIN_REASONS}
    return feedback, quarantine, stats


def join(cfg: JoinConfig) -> dict:
    """Run the join; returns the summary (also written to out/summary.json)."""
    from catalog import (
        FeedbackLogWriter,
        check_output_folder,
        join_feedback,
        log_parts,
        read_event_log,
        read_impression_log,
        replace_folder,
        schemas,
        staging_folder,
        write_table,
    )

    out = check_output_folder(cfg.out, OWN_FILES, job="jobs.join_feedback", what="joined feedback")
    imp_parts, ev_parts = log_parts(cfg.impressions), log_parts(cfg.events)
    size_mib = sum(p.stat().st_size for p in [*imp_parts, *ev_parts]) / 2**20
    engine = (
        cfg.engine if cfg.engine != "auto" else ("ray" if size_mib > cfg.ray_threshold_mib else "pyarrow")
    )
    t0 = time.perf_counter()
    stage = staging_folder(out)
    try:
        if engine == "ray":
            from jobs.services import ray_session

            with ray_session():
                feedback, quarantine, stats = join_on_ray(
                    imp_parts, ev_parts, buckets=cfg.buckets, late_s=cfg.late_s, scratch=stage / "scratch"
                )
            shutil.rmtree(stage / "scratch", ignore_errors=True)
        else:
            feedback, quarantine, stats = join_feedback(
                read_impression_log(cfg.impressions), read_event_log(cfg.events), late_s=cfg.late_s
            )
        FeedbackLogWriter(stage / "feedback").append(feedback)
        write_table(quarantine, stage / "quarantine.parquet", schemas.EVENT_QUARANTINE)
        summary = {**stats, "engine": engine, "log_mib": round(size_mib, 3), "wall_s": round(time.perf_counter() - t0, 2),
                   "out": str(out / "feedback")}  # fmt: skip
        (stage / "summary.json").write_text(json.dumps(summary, indent=2))
        replace_folder(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return summary


def summary_line(s: dict) -> str:
    q = s["quarantined"]
    return (
        f"joined {s['impressions']} impressions with {s['events']} events ({s['engine']}, {s['wall_s']:.1f}s): "
        f"{s['feedback_rows']} feedback rows, {s['engaged_impressions']} engaged; set aside: "
        + ", ".join(f"{n} {r}" for r, n in q.items())
        + f"; feedback log in {s['out']}"
    )


def main(argv: list[str] | None = None) -> None:
    args = job_parser(JoinConfig, __doc__).parse_args(argv)

    def body() -> int:
        print(summary_line(join(merge_config(JoinConfig, args))))
        return 0

    run_main(body)


if __name__ == "__main__":
    main()
