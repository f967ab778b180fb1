"""The Ray Serve deployments of the ranking app:

RankIngress (FastAPI: validation, feature store, cache lookup, candidates, slate; POST /rank, POST
/feedback, GET /healthz, GET /readyz, OpenAPI at /docs) -> RankerModel through a DeploymentHandle (LiRank scores,
batched across requests by candidate rows with @serve.batch, on CUDA when the replica has a GPU;
the checkpoint comes through user_config, so `reconfigure` hot-reloads it) and -> ImpressionLogger
(one replica that batches served items into IMPRESSION_LOG parquet parts and the events of POST
/feedback into ENGAGEMENT_EVENTS parts, flushed on size, time and shutdown). `serving.app.build_app` wires them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

import pyarrow as pa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve

from serving.api import FeedbackRequest, FeedbackResponse, RankRequest, RankResponse
from serving.service import (
    RequestError,
    ScoreRequest,
    ScoreResult,
    ScoringFailed,
    feedback_events,
    score_batch,
)
from serving.settings import RankerUserConfig, ServingSettings

log = logging.getLogger("ray.serve")


# ------------------------------------------------------------------------------------------ ranker


def _rows(requests: list[ScoreRequest]) -> int:
    return sum(max(r.rows, 1) for r in requests)


@serve.deployment(name="RankerModel", max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0.5})
class RankerModel:
    """Scores candidate rows with a LiRank checkpoint (model.safetensors + JSON; never serving.pt2).

    Args: catalog: the catalog folder the feature store is built from (a new checkpoint is checked
    against it before it is swapped in).  device: 'auto' (CUDA when the replica has a GPU), 'cpu', 'cuda'.
    user_config: RankerUserConfig (checkpoint, batching); a new one is applied by `reconfigure`.
    """

    def __init__(self, catalog: str, device: str = "auto", history_cap: int = 100):
        self.catalog, self.device, self.history_cap = catalog, device, history_cap
        self.ranker = None
        self.path: str | None = None
        self.quantize = False
        self.revision = ""
        self.batching = True
        self.max_batch_rows = 1024
        self.loaded_ms: int | None = None
        self.reloads = 0
        self.reload_error: dict | None = None
        self._probe: pa.Table | None = None
        self._store = None
        self.batches = {"batches": 0, "requests": 0, "rows": 0, "max_requests": 0}

    def _probe_features(self) -> pa.Table:
        """Feature rows of a few members and items, built by the online store: a new checkpoint must
        read them and give finite probabilities before it serves."""
        if self._probe is None:
            import numpy as np

            from serving.store import OnlineFeatureStore

            self._store = OnlineFeatureStore.from_catalog(self.catalog, history_cap=self.history_cap)
            store = self._store
            tables = []
            for member in store.member_ids[:4].tolist() + [-1]:  # known members and an unknown one
                state = store.member_state(member)
                rows = store.popular_rows[:8]
                tables.append(
                    store.features(
                        state,
                        rows,
                        np.full(len(rows), "exploit", object),
                        content_type="",
                        position=0,
                        timestamp_ms=0,
                    )
                )
            self._probe = pa.concat_tables(tables)
        return self._probe

    def _load(self, path: str, quantize: bool):
        import numpy as np

        from ranking import Ranker

        ranker = Ranker.load(path, device=self.device, quantize=quantize)
        probe = self._probe_features()
        self._store.check_ranker_schema(ranker.schema)
        hist = ranker.schema.history
        if hist is not None and self.history_cap < hist.length:
            raise ValueError(
                f"the ranker reads histories of {hist.length} actions but the feature store keeps {self.history_cap} "
                f"(history_cap); serve it with history_cap >= {hist.length}."
            )
        vocab = (
            ranker.schema.field("content_type").vocab
            if "content_type" in [f.name for f in ranker.schema.sparse]
            else ()
        )
        content_type = vocab[0] if vocab else "movie"
        probe = probe.set_column(
            probe.schema.get_field_index("content_type"),
            "content_type",
            pa.array([content_type] * probe.num_rows),
        )
        (result,) = score_batch(ranker, [ScoreRequest(probe, True, 0, content_type)])
        probs = np.stack(list(result.probabilities.values()))
        if result.error or not (np.isfinite(probs).all() and np.isfinite(result.score).all()):
            raise ValueError(
                f"checkpoint {path} gives non-finite scores on the feature store's rows; retrain it."
            )
        return ranker

    async def reconfigure(self, user_config: dict) -> None:
        """Apply a user_config: batching at once; a checkpoint loaded beside the old one, checked, then
        swapped in. Anything that fails leaves the old checkpoint serving (and says why in `info`)."""
        try:
            cfg = RankerUserConfig(**user_config)
        except Exception as exc:  # a typo in a user_config must not take a serving replica down
            if self.ranker is None:
                raise
            return self._refuse(user_config.get("ranker"), user_config.get("revision", ""), exc)
        self.batching, self.max_batch_rows = cfg.batching, cfg.max_batch_rows
        self._batched.set_max_batch_size(cfg.max_batch_rows)
        self._batched.set_batch_wait_timeout_s(cfg.batch_wait_ms / 1000.0)
        if await asyncio.to_thread(self._same, cfg):
            self.revision = cfg.revision
            return
        t0 = time.perf_counter()
        try:
            ranker = await asyncio.to_thread(self._load, cfg.ranker, cfg.quantize)
        except Exception as exc:  # a checkpoint that fails to load leaves the old one serving
            if self.ranker is None:
                raise
            return self._refuse(cfg.ranker, cfg.revision, exc)
        old = self.ranker.version if self.ranker is not None else None
        self.ranker, self.path, self.quantize, self.revision = ranker, cfg.ranker, cfg.quantize, cfg.revision
        self.loaded_ms, self.reload_error = _now_ms(), None
        self.reloads += old is not None
        log.info(
            "ranker %s loaded from %s in %.2fs (was %s)",
            ranker.version,
            cfg.ranker,
            time.perf_counter() - t0,
            old,
        )

    def _same(self, cfg: RankerUserConfig) -> bool:
        """The checkpoint asked for is the one serving (same folder, same content, same quantization)."""
        from ranking.checkpoint import checkpoint_version

        if self.ranker is None or cfg.ranker != self.path or cfg.quantize != self.quantize:
            return False
        try:
            return checkpoint_version(cfg.ranker) == self.ranker.version
        except (OSError, ValueError):
            return False

    def _refuse(self, path, revision: str, exc: Exception) -> None:
        self.reload_error = {
            "ranker": path,
            "revision": revision,
            "error": f"{type(exc).__name__}: {exc}",
            "at_ms": _now_ms(),
        }
        log.warning("ranker reload from %s refused, still serving %s: %s", path, self.ranker.version, exc)

    async def score(self, request: ScoreRequest) -> ScoreResult:
        if self.ranker is None:
            raise RuntimeError("no ranker loaded: give the deployment a user_config with a checkpoint")
        if self.batching and request.rows <= self.max_batch_rows:
            return await self._batched(request)
        return (await asyncio.to_thread(score_batch, self.ranker, [request]))[0]

    @serve.batch(max_batch_size=1024, batch_wait_timeout_s=0.002, batch_size_fn=_rows)
    async def _batched(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        ranker = self.ranker  # one model for the whole batch, even if a reload swaps it meanwhile
        b = self.batches
        b["batches"] += 1
        b["requests"] += len(requests)
        b["rows"] += _rows(requests)
        b["max_requests"] = max(b["max_requests"], len(requests))
        try:
            return await asyncio.to_thread(score_batch, ranker, requests)
        except Exception:  # one bad request must not fail the others batched with it: score each alone
            return [await asyncio.to_thread(_score_alone, ranker, r) for r in requests]

    def info(self) -> dict:
        r = self.ranker
        return {
            "loaded": r is not None,
            "version": r.version if r else None,
            "path": self.path,
            "device": str(r.device) if r else None,
            "tasks": list(r.schema.tasks) if r else [],
            "rank_task": r.rank_task if r else None,
            "bandit": bool(r and r.bandit is not None),
            "quantized": self.quantize,
            "batching": self.batching,
            "max_batch_rows": self.max_batch_rows,
            "revision": self.revision,
            "loaded_ms": self.loaded_ms,
            "reloads": self.reloads,
            "reload_error": self.reload_error,
            "batch_stats": dict(self.batches),
        }


@serve.deployment(name="NoOpRanker", max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0.5})
class NoOpRanker:
    """A scorer that does no model work (every candidate scores 0.5) behind the same ingress: the load
    test's baseline, so the cost of the model and of everything around it can be told apart."""

    def __init__(self, *args, **kwargs):
        pass

    async def score(self, request: ScoreRequest) -> ScoreResult:
        import numpy as np

        half = np.full(request.rows, 0.5, np.float32)
        return ScoreResult(probabilities={"click": half}, score=half, explored=False, ranker_version="noop")

    def info(self) -> dict:
        return {"loaded": True, "version": "noop", "path": None, "device": "none", "reload_error": None}


def _score_alone(ranker, request: ScoreRequest) -> ScoreResult:
    try:
        return score_batch(ranker, [request])[0]
    except Exception as exc:  # noqa: BLE001 - reported to the ingress as a server-side failure
        log.exception("scoring one request failed")
        return ScoreResult(ranker_version=ranker.version or "", failure=f"{type(exc).__name__}: {exc}")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# ------------------------------------------------------------------------------------------ impressions


class PartBuffer:
    """Rows batched into parquet parts by a catalog LogWriter: a part when `flush_rows` rows are buffered,
    every `flush_s` seconds (the deployment's timer), and at shutdown. A failed write keeps the rows for the
    next try; past `max_buffer_rows` kept rows (writes failing for long) the oldest are dropped and counted,
    so a broken disk cannot take the replica down with it."""

    def __init__(self, writer, name: str, flush_rows: int, max_buffer_rows: int):
        self.writer, self.name = writer, name
        self.flush_rows, self.max_buffer_rows = flush_rows, max_buffer_rows
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.stats = {
            "rows_received": 0,
            "rows_written": 0,
            "parts": 0,
            "write_failures": 0,
            "rows_dropped": 0,
        }
        self.lock = asyncio.Lock()

    async def add(self, rows: pa.Table) -> None:
        self.buffer.append(rows)
        self.buffered += rows.num_rows
        self.stats["rows_received"] += rows.num_rows
        if self.buffered >= self.flush_rows:
            await self.flush()

    async def flush(self) -> dict:
        """Write what is buffered as one part (on the event loop, one flush at a time)."""
        async with self.lock:
            if self.buffer:
                tables = list(self.buffer)
                table = pa.concat_tables(tables)
                try:
                    await asyncio.to_thread(self.writer.append, table)
                except Exception as exc:  # noqa: BLE001 - kept for the next flush
                    self.stats["write_failures"] += 1
                    self._bound()
                    log.error("%s log write to %s failed (rows kept): %s", self.name, self.writer.folder, exc)
                else:
                    del self.buffer[: len(tables)]  # rows logged meanwhile stay buffered
                    self.buffered -= table.num_rows
                    self.stats["rows_written"] += table.num_rows
                    self.stats["parts"] += 1
        return {**self.stats, "buffered": self.buffered, "folder": str(self.writer.folder)}

    def _bound(self) -> None:
        while self.buffered > self.max_buffer_rows and len(self.buffer) > 1:
            dropped = self.buffer.pop(0)
            self.buffered -= dropped.num_rows
            self.stats["rows_dropped"] += dropped.num_rows
            log.error("%s log buffer full: %d oldest rows dropped", self.name, dropped.num_rows)

    def close(self) -> None:
        """Write what is buffered, synchronously (a graceful shutdown)."""
        if self.buffer:
            try:
                self.writer.append(pa.concat_tables(self.buffer))
                self.buffer, self.buffered = [], 0
            except Exception:  # noqa: BLE001 - nothing left to keep them in
                log.exception("%s log: %d rows could not be written at shutdown", self.name, self.buffered)


@serve.deployment(
    name="ImpressionLogger",
    num_replicas=1,
    max_ongoing_requests=1000,
    graceful_shutdown_wait_loop_s=1.0,
    graceful_shutdown_timeout_s=30.0,
    ray_actor_options={"num_cpus": 0},
)
class ImpressionLogger:
    """The endpoint's two logs: served items (IMPRESSION_LOG parts under `folder`, `log`) and the
    engagement events clients report on POST /feedback (ENGAGEMENT_EVENTS parts under `event_folder`,
    `log_events`), each batched by a PartBuffer. `flush` writes both; its answer is the impression log's
    counts, with the events log's under "events"."""

    def __init__(
        self,
        folder: str,
        flush_rows: int = 5000,
        flush_s: float = 2.0,
        max_buffer_rows: int = 2_000_000,
        event_folder: str | None = None,
    ):
        from catalog import EventLogWriter, ImpressionLogWriter

        event_folder = event_folder or str(Path(folder).parent / "events")
        self.impressions = PartBuffer(ImpressionLogWriter(folder), "impression", flush_rows, max_buffer_rows)
        self.events = PartBuffer(EventLogWriter(event_folder), "event", flush_rows, max_buffer_rows)
        self.flush_s = flush_s
        self._timer: asyncio.Task | None = None

    def _start_timer(self) -> None:
        if self._timer is None or self._timer.done():
            self._timer = asyncio.get_running_loop().create_task(self._every())

    async def log(self, rows: pa.Table) -> None:
        self._start_timer()
        await self.impressions.add(rows)

    async def log_events(self, rows: pa.Table) -> None:
        self._start_timer()
        await self.events.add(rows)

    async def _every(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - the timer must outlive any one failure
                log.exception("log flush failed")

    async def flush(self) -> dict:
        events = await self.events.flush()
        return {**(await self.impressions.flush()), "events": events}

    def __del__(self):  # Serve calls it at a graceful shutdown: write what is buffered
        for part in (self.impressions, self.events):
            part.close()


# ------------------------------------------------------------------------------------------ ingress

app = FastAPI(
    title="interest-explorer ranking endpoint",
    description="Cached LLM-chosen novel clusters, LiRank inside each. POST /rank; GET /healthz, /readyz.",
    version="1",
)
_LIMITS = {"max_body_bytes": 256 * 1024}
_REPLICA: dict = {"metrics": None}  # this ingress replica's Metrics, for the module-level handlers


def _count(outcome: str) -> None:
    if _REPLICA["metrics"] is not None:
        _REPLICA["metrics"].outcome(outcome)


def _problem(status: int, message: str, detail: list | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "detail": detail or []}, status_code=status)


def _counted(status: int, message: str, detail: list | None = None) -> JSONResponse:
    """A client-error answer, counted as ranking_requests_total{outcome="client_error"}."""
    _count("client_error")
    return _problem(status, message, detail)


class BodyLimit:
    """ASGI middleware: a request body over `max_body_bytes` gets a 413 before anything parses it."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        limit = _LIMITS["max_body_bytes"]
        declared = dict(scope.get("headers") or []).get(b"content-length")

        def too_large():
            return _counted(
                413,
                f"request body over {limit} bytes; send at most {limit} (fewer recent or excluded items).",
            )

        if declared is not None:
            try:
                if int(declared) > limit:
                    return await too_large()(scope, receive, send)
            except ValueError:
                return await _counted(400, f"Content-Length {declared!r} is not a number.")(
                    scope, receive, send
                )
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                chunks = None
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return await too_large()(scope, receive, send)
            more = message.get("more_body", False)
        if chunks is None:
            return await self.inner(scope, receive, send)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.inner(scope, replay, send)


app.add_middleware(BodyLimit)


def _json_safe(value):
    """`value` if strict JSON can carry it, else its text (NaN and infinities are not JSON: a client's bad
    float must come back in a 422, not break the error response into a 500)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(value, default=str)[:80]
    return value


def _field_errors(errors) -> list[dict]:
    out = []
    for e in errors:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        field = ".".join(loc) or "body"
        value = e.get("input")
        ctx = e.get("ctx") or {}
        limit = next(
            (f"{k} {v}" for k, v in ctx.items() if k in ("ge", "le", "gt", "lt", "max_length", "min_length")),
            None,
        )
        shown = json.dumps(value, default=str)[:80] if e.get("type") != "missing" else None
        msg = (
            f"{field}: {e.get('msg')}"
            + (f" (got {shown})" if shown is not None else "")
            + (f"; limit: {limit}" if limit else "")
        )
        out.append(
            {
                "field": field,
                "value": _json_safe(value) if shown is not None else None,
                "limit": limit,
                "message": msg,
                "type": e.get("type"),
            }
        )
    return out


@app.exception_handler(RequestValidationError)
async def _validation(request: Request, exc: RequestValidationError):
    detail = _field_errors(exc.errors())
    bad_json = [e for e in exc.errors() if e.get("type") == "json_invalid"]
    if bad_json:
        why = (bad_json[0].get("ctx") or {}).get("error", "")
        return _counted(400, f"the body is not valid JSON ({why}); send a JSON object (see /docs).")
    return _counted(422, "; ".join(d["message"] for d in detail), detail)


@app.exception_handler(RequestError)
async def _request_error(request: Request, exc: RequestError):
    return _problem(422, str(exc), [{"field": exc.field, "value": exc.value, "message": str(exc)}])


class Unavailable(RuntimeError):
    """The ranker deployment did not answer in time or failed: a 503, retry later."""


@app.exception_handler(Unavailable)
@app.exception_handler(ScoringFailed)
async def _unavailable(request: Request, exc: Exception):
    return _problem(503, str(exc))


@serve.deployment(name="RankIngress", max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5})
@serve.ingress(app)
class RankIngress:
    """Args: ranker, logger: handles of RankerModel and ImpressionLogger.  settings: ServingSettings fields."""

    def __init__(self, ranker, logger, settings: dict):
        from serving.cache_client import GuardedCache
        from serving.metrics import Metrics
        from serving.service import RankService
        from serving.store import OnlineFeatureStore

        self.settings = ServingSettings(**settings)
        _LIMITS["max_body_bytes"] = self.settings.max_body_bytes
        self.ranker, self.logger = ranker, logger
        t0 = time.perf_counter()
        self.store = OnlineFeatureStore.from_catalog(
            self.settings.catalog,
            feedback_logs=self.settings.feedback_logs,
            history_cap=self.settings.history_cap,
        )
        self.store_s = time.perf_counter() - t0
        url = self.settings.redis_url or os.environ.get("REDIS_URL")
        if not url:
            raise ValueError(
                "no Redis URL for the cache: set REDIS_URL in the replicas' environment (runtime_env env_vars) "
                "or redis_url in the app args."
            )
        s = self.settings
        self.cache = GuardedCache(
            url,
            namespace=s.namespace,
            k=self.store.k,
            timeout_ms=s.redis_timeout_ms,
            failures=s.breaker_failures,
            cooldown_s=s.breaker_cooldown_s,
        )
        self.metrics = Metrics()
        _REPLICA["metrics"] = self.metrics
        self._pending: set[asyncio.Task] = set()
        self.log_failures = 0
        self.service = RankService(self.store, self.cache, self._score, self._sink, s, self.metrics)

    async def _score(self, request: ScoreRequest) -> ScoreResult:
        try:
            return await asyncio.wait_for(self.ranker.score.remote(request), timeout=30.0)
        except TimeoutError as exc:
            raise Unavailable("the ranker did not answer within 30 s; retry later.") from exc
        except Exception as exc:  # a dead or failing ranker replica
            raise Unavailable(f"the ranker failed ({type(exc).__name__}); retry later.") from exc

    def _sink(self, rows: pa.Table) -> None:
        task = asyncio.get_running_loop().create_task(self._log(rows))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _log(self, rows: pa.Table) -> None:
        for attempt in range(3):  # the logger replica may be restarting: retry, then count the loss
            try:
                await self.logger.log.remote(rows)
                return
            except Exception as exc:  # noqa: BLE001
                if attempt == 2:
                    self.log_failures += 1
                    log.error("impression log call failed, %d rows lost: %s", rows.num_rows, exc)
                else:
                    await asyncio.sleep(0.5 * (attempt + 1))

    async def __del__(self):
        """At a graceful shutdown, wait (bounded) for the impression-log calls still in flight."""
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=10.0)

    async def feedback(self, request: dict | FeedbackRequest) -> dict:
        """Append the events of POST /feedback to the events log (the DeploymentHandle API; HTTP goes
        through `http_feedback`). The answer comes once the logger holds them; a logger that cannot be
        reached is a 503 (retry), never a silent loss."""
        req = request if isinstance(request, FeedbackRequest) else FeedbackRequest.model_validate(request)
        rows = feedback_events(req, _now_ms())
        for attempt in range(3):  # the logger replica may be restarting
            try:
                await asyncio.wait_for(self.logger.log_events.remote(rows), timeout=10.0)
                break
            except Exception as exc:  # noqa: BLE001
                if attempt == 2:
                    self.metrics.outcome("feedback_unavailable")
                    raise Unavailable(
                        f"the events log did not accept the events ({type(exc).__name__}); retry."
                    ) from exc
                await asyncio.sleep(0.5 * (attempt + 1))
        self.metrics.outcome("feedback_ok")
        return {"request_id": req.request_id, "accepted": rows.num_rows}

    async def rank(self, request: dict | RankRequest) -> dict:
        """The /rank answer for a request dict (the DeploymentHandle API; HTTP goes through `http_rank`)."""
        req = request if isinstance(request, RankRequest) else RankRequest.model_validate(request)
        try:
            out = await self.service.rank(req)
        except RequestError:
            self.metrics.outcome("client_error")
            raise
        except (Unavailable, ScoringFailed):
            self.metrics.outcome("unavailable")
            raise
        except Exception:
            self.metrics.outcome("server_error")
            raise
        self.metrics.outcome("ok")
        return out

    @app.post(
        "/rank",
        response_model=RankResponse,
        responses={
            400: {"description": "malformed JSON"},
            413: {"description": "body too large"},
            422: {"description": "a field out of range; the message names it"},
            503: {"description": "ranker unavailable"},
        },
    )
    async def http_rank(self, body: RankRequest) -> dict:
        return await self.rank(body)

    @app.post(
        "/feedback",
        status_code=202,
        response_model=FeedbackResponse,
        responses={
            400: {"description": "malformed JSON"},
            413: {"description": "body too large"},
            422: {
                "description": "a field out of range (e.g. dwell_s negative or not finite); the message names it"
            },
            503: {"description": "the events log is unavailable; retry"},
        },
    )
    async def http_feedback(self, body: FeedbackRequest) -> dict:
        return await self.feedback(body)

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(self):
        try:
            ranker = await asyncio.wait_for(self.ranker.info.remote(), timeout=5.0)
        except Exception as exc:
            ranker = {"loaded": False, "error": f"{type(exc).__name__}: {exc}"}
        redis_state = await asyncio.to_thread(self.cache.state)
        store = {
            "loaded": True,
            "catalog": self.settings.catalog,
            "members": int(len(self.store.member_ids)),
            "items": int(len(self.store.item_ids)),
            "clusters": len(self.store.cluster_names),
            "load_s": round(self.store_s, 3),
        }
        ready = bool(ranker.get("loaded"))
        body = {
            "ready": ready,
            "ranker": ranker,
            "feature_store": store,
            "redis": redis_state,
            "impression_log_failures": self.log_failures,
        }
        return JSONResponse(body, status_code=200 if ready else 503)
