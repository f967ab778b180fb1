"""Redis pipelined write rate from Python (redis-py + hiredis), against redis-benchmark on the same
server in the same run."""

from __future__ import annotations

import subprocess
import time

from bench.tools import redis_benchmark
from jobs.services import RedisServer, connect_redis


def _python_set_rate(client, n: int, pipeline: int, value: bytes) -> float:
    client.flushdb()
    t0 = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.set(f"bench:{i}", value)
        if (i + 1) % pipeline == 0:
            pipe.execute()
    pipe.execute()
    return n / (time.perf_counter() - t0)


def _python_hset_rate(client, n: int, fields_per_key: int, value: bytes) -> float:
    client.flushdb()
    t0 = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for k in range(n // fields_per_key):
        pipe.hset(f"bench:h:{k}", mapping={f"f{j}": value for j in range(fields_per_key)})
        if (k + 1) % 50 == 0:
            pipe.execute()
    pipe.execute()
    return n / (time.perf_counter() - t0)


def _redis_benchmark_rate(exe, port: int, n: int, pipeline: int, size: int, password: str) -> float:
    # -a: redis-benchmark 6.2 reads the password from no other place; the server is this bench's own,
    # on loopback, and stops right after
    out = subprocess.run(
        [
            str(exe),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-a",
            password,
            "-t",
            "set",
            "-n",
            str(n),
            "-P",
            str(pipeline),
            "-d",
            str(size),
            "-r",
            str(n),
            "--csv",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if cells and cells[0] == "SET":
            return float(cells[1])
    raise RuntimeError(f"unexpected redis-benchmark output: {out!r}")


def run(quick: bool = False) -> list[dict]:
    exe = redis_benchmark()
    n = 50_000 if quick else 200_000
    size = 32
    server = RedisServer.start()
    try:
        client = connect_redis(server.url)
        py = _python_set_rate(client, n, 1000, b"x" * size)
        py_h = _python_hset_rate(client, n, 100, b"x" * size)
        rb = _redis_benchmark_rate(exe, server.port, n, 16, size, server.password)
        version = client.info("server")["redis_version"]
        client.flushdb()
        client.close()
    finally:
        server.stop()
    detail = {"keys": n, "value_bytes": size, "server": f"redis {version}"}
    return [
        {
            "name": "redis_pipelined_set",
            "value": py,
            "unit": "SET/s",
            "baseline": "redis-benchmark -P 16 SET",
            "baseline_value": rb,
            "ratio": py / rb,
            "detail": {**detail, "python_pipeline": 1000},
        },
        {
            "name": "redis_pipelined_hset_fields",
            "value": py_h,
            "unit": "fields/s",
            "baseline": "redis-benchmark -P 16 SET",
            "baseline_value": rb,
            "ratio": py_h / rb,
            "detail": {**detail, "fields_per_key": 100},
        },
    ]
