"""Quiet by default: the job's own lines on the terminal, library chatter in a log file.

    with library_output(run_dir / "library.log", verbose=args.verbose) as log:
        ...  # print() -> the terminal; vLLM, Ray, transformers, torch, C++ warnings -> log

How: file descriptor 2 (and with it `sys.stderr`, Python warnings, every logging handler that writes to
stderr, tqdm bars of libraries, subprocesses such as the raylet and Redis, C++ glog lines) points at the
log file while the block runs; stdout (the job's stage lines and summaries) is left alone. vLLM logs to
stdout by default: VLLM_LOGGING_STREAM sends it to stderr, in this process and in the local Ray's workers
(they inherit the environment; the bulk jobs pass it to their actors in explore.pipeline.Resources.env, for a remote cluster). The lines
Ray forwards from its workers (their stdout and stderr) and the raylet's error messages go to file
descriptor 2 too (`route_ray_worker_output`, after ray.init), also inside terminal_stderr().

On the way out, also on an error, the terminal's stderr comes back before the error is printed, so a
failing stage shows its error paragraph or traceback; the path of the log is printed with it. The job's
own progress bars write to stderr: wrap the stage in `terminal_stderr()` to keep them on the terminal.
With verbose=True nothing is redirected.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterator
from pathlib import Path

# vLLM's own handler writes to stdout unless told otherwise (vllm.envs.VLLM_LOGGING_STREAM)
VLLM_STREAM_ENV = {"VLLM_LOGGING_STREAM": "ext://sys.stderr"}

_terminal: list = []  # the terminal's stderr while library_output is active (a stack: nested blocks)
_undo: list = []  # patches made inside the block (route_ray_worker_output), undone at its end


@contextlib.contextmanager
def library_output(path: str | Path, *, verbose: bool = False) -> Iterator[Path | None]:
    """Send library output (everything written to stderr, vLLM's log) to `path` while the block runs.

    Yields the log's path, or None with verbose=True (nothing redirected)."""
    if verbose:
        yield None
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fd = os.dup(2)
    previous_env = {k: os.environ.get(k) for k in VLLM_STREAM_ENV}
    terminal = open(os.dup(saved_fd), "w", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    with open(path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 2)
    os.environ.update(VLLM_STREAM_ENV)
    _retarget_vllm_logger()
    _terminal.append(terminal)
    failed = False
    try:
        yield path
    except BaseException:
        failed = True
        raise
    finally:
        _terminal.pop()
        while _undo and not _terminal:
            _undo.pop()()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        terminal.close()
        for k, v in previous_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if failed and path.exists() and path.stat().st_size:
            print(f"library output (vLLM, Ray, transformers) of this run: {path}", file=sys.stderr)


def _retarget_vllm_logger() -> None:
    """vLLM imported before the block configured its handler on stdout: point it at stderr."""
    if "vllm" not in sys.modules:
        return
    import logging

    for handler in logging.getLogger("vllm").handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.__stdout__):
            handler.setStream(sys.stderr)


@contextlib.contextmanager
def terminal_stderr() -> Iterator[None]:
    """`sys.stderr` on the terminal inside library_output (for the job's own progress bars); a no-op outside."""
    if not _terminal:
        yield
        return
    previous = sys.stderr
    sys.stderr = _terminal[-1]
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr = previous


class _Fd2:
    """A text sink on file descriptor 2 as it is at each write (the library log inside library_output),
    whatever `sys.stderr` points at then: Ray's log thread must not follow terminal_stderr() to the
    terminal."""

    encoding = "utf-8"

    def write(self, text: str) -> int:
        data = text.encode("utf-8", "replace")
        while data:
            data = data[os.write(2, data) :]
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def route_ray_worker_output() -> bool:
    """Inside library_output, after ray.init: what Ray prints from its workers (stdout and stderr: vLLM in
    Ray Data actors, Serve replicas' warnings) and the raylet's error messages go to file descriptor 2, the
    log, also while a terminal_stderr() block has `sys.stderr` on the terminal (Ray prints from a
    background thread, which would otherwise follow it there). Undone when the block ends. False where this
    Ray version's printing hooks are not found (then those lines reach the terminal)."""
    if not _terminal:
        return False
    try:
        from ray._private import worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return False
    original = getattr(worker, "print_to_stdstream", None)
    print_logs = getattr(worker, "print_worker_logs", None)
    dedup = getattr(worker, "stderr_deduplicator", None)
    if original is None or print_logs is None or dedup is None:
        return False
    if getattr(original, "_to_log", False):
        return True
    if "ray_print_logs" not in [name for name, _ in dispatcher.handlers]:
        return False
    sink = _Fd2()

    def to_log(data: dict, ignore_prefix: bool) -> None:
        data = {**data, "is_err": True}
        batches = dedup.deduplicate(data) if data.get("pid") != "autoscaler" else [data]
        for batch in batches:
            print_logs(batch, sink, ignore_prefix)

    to_log._to_log = True
    ignore_prefix = worker._should_ignore_worker_log_prefix(worker.global_worker)
    dispatcher.remove_handler("ray_print_logs")  # workers' lines: a handler bound to the original function
    dispatcher.add_handler("ray_print_logs", functools.partial(to_log, ignore_prefix=ignore_prefix))
    worker.print_to_stdstream = to_log  # the raylet's error messages: looked up at each call
    _undo.append(lambda: setattr(worker, "print_to_stdstream", original))
    return True
