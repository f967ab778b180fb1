"""Inspect and operate the Redis best-of-n cache that jobs.best_of_n publishes.

    REDIS_URL=redis://host:6379/0 python -m jobs.cache status              # live version and its meta
    REDIS_URL=... python -m jobs.cache versions                            # versions still in Redis, and
                                                                           # versions being written/abandoned
    REDIS_URL=... python -m jobs.cache gc [--idle-s 3600] [--dry-run]      # remove abandoned versions
    REDIS_URL=... python -m jobs.cache lookup 3,17 [--exclude 5,9] [--top 4]  # what the endpoint will read
    REDIS_URL=... python -m jobs.cache rollback                            # make the previous version live

The key layout is documented in explore/cache/__init__.py and README.md.
"""

from __future__ import annotations

import argparse
import os
import time

from jobs.common import run_main


def _ids(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ValueError(f"{flag} {text!r}: give comma-separated cluster ids, e.g. 3,17.") from exc


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["status", "versions", "lookup", "rollback", "gc"])
    p.add_argument(
        "key", nargs="?", help="lookup: the history key, comma-separated cluster ids, oldest first"
    )
    p.add_argument("--redis-url", dest="redis_url", help="default $REDIS_URL")
    p.add_argument("--namespace", default="explore")
    p.add_argument("--exclude", default="", help="lookup: clusters to leave out (the member's history)")
    p.add_argument("--top", type=int, help="lookup: at most this many clusters")
    p.add_argument("--idle-s", dest="idle_s", type=float, default=3600.0,
                   help="gc: remove versions being written with no chunk for this long (1 hour)")  # fmt: skip
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="gc: list, remove nothing")
    p.add_argument("--keep-current-s", dest="keep_current_s", type=int, default=7 * 86_400,
                   help="rollback: how long the demoted version stays (7 days)")  # fmt: skip
    args = p.parse_args(argv)

    def body() -> int:
        from explore.cache import (
            CacheReader,
            gc_staging,
            list_versions,
            live_version,
            rollback,
            staging_versions,
            version_meta,
        )
        from jobs.services import ServiceError, connect_redis

        url = args.redis_url or os.environ.get("REDIS_URL")
        if not url:
            raise ServiceError("no Redis to inspect: set REDIS_URL or pass --redis-url redis://host:port/db.")
        client = connect_redis(url, name="--redis-url" if args.redis_url else "REDIS_URL")
        ns = args.namespace
        live = live_version(client, ns)
        if args.command == "status":
            print(f"live version: {live}")
            for k, v in sorted(version_meta(client, ns, live).items()) if live else ():
                print(f"  {k}: {v}")
        elif args.command == "versions":
            for version, ms in list_versions(client, ns):
                print(f"{version}  went live at {ms} ms{'  (live)' if version == live else ''}")
            now_ms = time.time_ns() // 1_000_000
            for v in staging_versions(client, ns):
                idle = (now_ms - (v.updated_ms or v.created_ms or now_ms)) / 1000
                print(
                    f"{v.version}  {v.status}: {v.fields} fields, last write {idle:.0f} s ago, expires in "
                    f"{v.ttl_s} s (abandoned? `python -m jobs.cache gc` removes it once idle)"
                )
        elif args.command == "gc":
            if args.dry_run:
                now_ms = time.time_ns() // 1_000_000
                idle = [
                    v.version
                    for v in staging_versions(client, ns)
                    if now_ms - (v.updated_ms or v.created_ms or 0) >= args.idle_s * 1000
                ]
                print(
                    f"would remove {len(idle)} version(s) idle for {args.idle_s:.0f} s: {', '.join(idle) or '-'}"
                )
            else:
                removed = gc_staging(client, ns, idle_s=args.idle_s)
                print(f"removed {len(removed)} abandoned version(s): {', '.join(removed) or '-'}")
        elif args.command == "lookup":
            if not args.key:
                raise ValueError("lookup needs a history key, e.g. `python -m jobs.cache lookup 3,17`.")
            key = _ids(args.key, "key")
            hit = CacheReader(client, ns, k=len(key)).lookup(
                key, exclude=_ids(args.exclude, "--exclude"), top=args.top
            )
            print(f"{hit.level} (field {hit.field!r}) in version {hit.version}")
            for c, s in zip(hit.clusters, hit.scores, strict=True):
                print(f"  cluster {c}: {s:.5f}")
        else:
            print(
                f"rolled back: {rollback(client, ns, keep_current_s=args.keep_current_s)} is live again (was {live})"
            )
        client.close()
        return 0

    run_main(body)


if __name__ == "__main__":
    main()
