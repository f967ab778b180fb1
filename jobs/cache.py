"""Inspect and operate the Redis best-of-n cache that jobs.best_of_n publishes.

    REDIS_URL=redis://host:6379/0 python -m jobs.cache status              # live version and its meta
    REDIS_URL=... python -m jobs.cache versions                            # versions still in Redis
    REDIS_URL=... python -m jobs.cache lookup 3,17 [--exclude 5,9] [--top 4]  # what the endpoint will read
    REDIS_URL=... python -m jobs.cache rollback                            # make the previous version live

The key layout is documented in explore/cache.py and README.md.
"""

from __future__ import annotations

import argparse
import os

from jobs.common import run_main


def _ids(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ValueError(f"{flag} {text!r}: give comma-separated cluster ids, e.g. 3,17.") from exc


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["status", "versions", "lookup", "rollback"])
    p.add_argument(
        "key", nargs="?", help="lookup: the history key, comma-separated cluster ids, oldest first"
    )
    p.add_argument("--redis-url", dest="redis_url", help="default $REDIS_URL")
    p.add_argument("--namespace", default="explore")
    p.add_argument("--exclude", default="", help="lookup: clusters to leave out (the member's history)")
    p.add_argument("--top", type=int, help="lookup: at most this many clusters")
    p.add_argument("--keep-current-s", dest="keep_current_s", type=int, default=7 * 86_400,
                   help="rollback: how long the demoted version stays (7 days)")  # fmt: skip
    args = p.parse_args(argv)

    def body() -> int:
        from explore.cache import CacheReader, list_versions, live_version, rollback, version_meta
        from jobs.services import ServiceError, connect_redis

        url = args.redis_url or os.environ.get("REDIS_URL")
        if not url:
            raise ServiceError("no Redis to inspect: set REDIS_URL or pass --redis-url redis://host:port/db.")
        client = connect_redis(url)
        ns = args.namespace
        live = live_version(client, ns)
        if args.command == "status":
            print(f"live version: {live}")
            for k, v in sorted(version_meta(client, ns, live).items()) if live else ():
                print(f"  {k}: {v}")
        elif args.command == "versions":
            for version, ms in list_versions(client, ns):
                print(f"{version}  went live at {ms} ms{'  (live)' if version == live else ''}")
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
