"""A small Python client of the ranking endpoint, over HTTP or over a Ray Serve DeploymentHandle.

from serving.client import RankClient
client = RankClient("http://127.0.0.1:8000")
answer = client.rank(17, k=10, explore_slots=2, recent=[{"item_id": 50, "rating": 5}])
[(it["item_id"], it["source"]) for it in answer["items"]]

HandleClient().rank(17)   # inside the Ray cluster: no HTTP, same answer
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class RankError(RuntimeError):
    """The endpoint refused the request (4xx) or failed (5xx): `status` and the server's message."""

    def __init__(self, status: int, message: str, detail=None):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.detail = status, message, detail


def rank_body(
    member_id: int,
    *,
    recent: Sequence[dict] | None = None,
    k: int = 10,
    explore_slots: int = 2,
    explore: bool = False,
    content_type: str = "movie",
    exclude_item_ids: Sequence[int] | None = None,
    order: str = "ranked",
) -> dict:
    """The POST /rank JSON body (fields as documented in README and at /docs)."""
    return {
        "member_id": member_id,
        "recent": list(recent or []),
        "k": k,
        "explore_slots": explore_slots,
        "explore": explore,
        "content_type": content_type,
        "exclude_item_ids": list(exclude_item_ids or []),
        "order": order,
    }


class RankClient:
    """Args: base_url: where the endpoint listens.  timeout_s: per call.  Keeps one HTTP session."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, timeout_s: float = 10.0):
        import requests

        self.base_url, self.timeout_s = base_url.rstrip("/"), timeout_s
        self.session = requests.Session()

    def _check(self, response) -> dict:
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text[:500]}
        if response.status_code >= 400:
            raise RankError(response.status_code, body.get("error", str(body)), body.get("detail"))
        return body

    def rank(self, member_id: int, **kwargs) -> dict:
        """One ranked slate; RankError on a 4xx or 5xx. kwargs: the other `rank_body` fields."""
        r = self.session.post(
            f"{self.base_url}/rank", json=rank_body(member_id, **kwargs), timeout=self.timeout_s
        )
        return self._check(r)

    def feedback(self, request_id: str, events: Sequence[dict]) -> dict:
        """Report engagement with the items of an answered slate (POST /feedback); RankError on a 4xx/5xx.
        events: dicts of item_id and any of click, like, share, skip (bools), dwell_s (seconds)."""
        body = {"request_id": request_id, "events": list(events)}
        return self._check(self.session.post(f"{self.base_url}/feedback", json=body, timeout=self.timeout_s))

    def healthz(self) -> dict:
        return self._check(self.session.get(f"{self.base_url}/healthz", timeout=self.timeout_s))

    def readyz(self) -> dict:
        """The readiness report (ranker, feature store, Redis); RankError(503, ...) when not ready."""
        return self._check(self.session.get(f"{self.base_url}/readyz", timeout=self.timeout_s))

    def close(self) -> None:
        self.session.close()


class HandleClient:
    """The same calls through the ingress deployment's DeploymentHandle (inside the Ray cluster)."""

    def __init__(self, handle=None):
        if handle is None:
            from serving.deploy import ingress_handle

            handle = ingress_handle()
        self.handle = handle

    def rank(self, member_id: int, *, timeout_s: float = 30.0, **kwargs) -> dict:
        return self.handle.rank.remote(rank_body(member_id, **kwargs)).result(timeout_s=timeout_s)

    async def rank_async(self, member_id: int, **kwargs) -> dict:
        return await self.handle.rank.remote(rank_body(member_id, **kwargs))

    def feedback(self, request_id: str, events: Sequence[dict], *, timeout_s: float = 30.0) -> dict:
        body = {"request_id": request_id, "events": list(events)}
        return self.handle.feedback.remote(body).result(timeout_s=timeout_s)


def rank_many(
    base_url: str,
    bodies: Sequence[dict],
    *,
    concurrency: int = 8,
    timeout_s: float = 30.0,
    progress: Callable[[int], object] | None = None,
) -> tuple[list[dict | RankError], list[float]]:
    """POST every body to /rank from `concurrency` threads (one HTTP session each); `progress(1)` after each
    answer (e.g. a progress bar's update).

    Returns (answers in input order, each a response dict or the RankError it raised; the client-side
    latency of each call in ms)."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    local = threading.local()
    answers: list = [None] * len(bodies)
    latency = [0.0] * len(bodies)

    def call(i: int) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = RankClient(base_url, timeout_s=timeout_s)
        t0 = time.perf_counter()
        try:
            r = client.session.post(f"{client.base_url}/rank", json=bodies[i], timeout=timeout_s)
            answers[i] = client._check(r)
        except RankError as exc:
            answers[i] = exc
        except Exception as exc:  # noqa: BLE001 - a transport failure is an answer too (status 0)
            answers[i] = RankError(0, f"{type(exc).__name__}: {exc}")
        latency[i] = (time.perf_counter() - t0) * 1000
        if progress is not None:
            progress(1)

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        list(pool.map(call, range(len(bodies))))
    return answers, latency
