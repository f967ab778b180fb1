"""The ranking endpoint against real Ray Serve, a real redis-server and real checkpoints of a tiny world:
slates follow the documented rule, the online features equal the offline ones, bad requests get their
4xx, Redis going away degrades and recovers, a hot reload under load drops nothing, and impressions
are logged as served."""

from __future__ import annotations

import ast
import concurrent.futures as cf
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import redis

from catalog.logs import read_feedback_log, read_impression_log
from explore.cache import CacheReader, CacheWriter, encode_entry, key_field
from serving.breaker import CircuitBreaker
from serving.cache_client import redact_url
from serving.candidates import Candidates
from serving.client import RankClient, RankError
from serving.slate import assemble, explore_positions
from serving.store import OnlineFeatureStore

ROOT = Path(__file__).resolve().parents[1]
NS = "explore"


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory, ml_catalog):
    """A catalog, a round of simulated feedback and two tiny feedback rankers trained on it."""
    from jobs.simulate import simulate_round
    from jobs.train_ranker import TrainJobConfig, train
    from sim import MemberSimulator, SimConfig

    root = tmp_path_factory.mktemp("serving")
    ml_catalog.save(root / "catalog")
    simulator = MemberSimulator.for_catalog(ml_catalog, SimConfig(seed=0))
    simulate_round(ml_catalog, simulator, "random", str(root / "logs" / "r0"), seed=0)
    for name, seed in (("ranker", 0), ("ranker2", 1)):
        train(
            TrainJobConfig(
                out=str(root / name),
                catalog=str(root / "catalog"),
                dataset="feedback",
                logs=[str(root / "logs" / "r0")],
                preset="tiny",
                epochs=1,
                export=False,
                seed=seed,
            )
        )
    return SimpleNamespace(root=root, catalog=ml_catalog, store=OnlineFeatureStore(ml_catalog))


def cached_clusters(key: tuple[int, int], n_clusters: int) -> list[int]:
    """The test's 'best-of-n' entry of a key: ten clusters outside it, a fixed function of the key."""
    out = []
    for j in range(1, 200):
        c = (key[0] * 7 + key[1] * 3 + j * 11) % n_clusters
        if c not in key and c not in out:
            out.append(c)
        if len(out) == 10:
            return out
    return out


def publish(url: str, catalog) -> None:
    client = redis.Redis.from_url(url)
    keys = {tuple(h[-2:]) for h in catalog.histories["clusters"].to_pylist() if len(h) >= 2}
    entries = [
        (
            key_field(k),
            encode_entry(cached_clusters(k, catalog.n_clusters), [1.0 - 0.05 * i for i in range(10)]),
        )
        for k in sorted(keys)
    ]
    entries.append(("*", encode_entry([3, 9, 21, 30], [0.6, 0.5, 0.4, 0.3])))
    writer = CacheWriter(client, NS)
    writer.begin({"k": 2, "novelty_model": "test-novelty", "alignment_model": "test-alignment"})
    writer.commit(writer.write(entries))
    client.close()


@pytest.fixture(scope="module")
def app(world, ray_local):
    from ray import serve

    from jobs.services import RedisServer, free_port
    from serving.deploy import app_entry, deploy, deployment_entry, load_config, with_ranker

    server = RedisServer.start()
    publish(server.url, world.catalog)
    port = free_port()
    config = with_ranker(load_config(), str(world.root / "ranker"), batch_wait_ms=5.0)
    config["http_options"]["port"] = port
    entry = app_entry(config)
    entry["args"].update(
        catalog=str(world.root / "catalog"),
        log_dir=str(world.root / "impressions"),
        breaker_cooldown_s=0.5,
        log_flush_s=0.5,
    )
    entry["runtime_env"] = {"env_vars": {"REDIS_URL": server.url}}
    for name in ("RankIngress", "RankerModel"):
        deployment_entry(config, name)["ray_actor_options"] = {"num_cpus": 0.25}
    deploy(config)
    state = SimpleNamespace(
        config=config,
        redis=server,
        port=port,
        url=f"http://127.0.0.1:{port}",
        client=RankClient(f"http://127.0.0.1:{port}"),
    )
    yield state
    state.client.close()
    serve.shutdown()
    state.redis.stop()


def member_history(catalog, member: int) -> list[int]:
    h = dict(
        zip(
            catalog.histories["member_id"].to_pylist(), catalog.histories["clusters"].to_pylist(), strict=True
        )
    )
    return h[member]


def rated_items(catalog, member: int) -> set[int]:
    inter = catalog.interactions
    mask = inter["member_id"].to_numpy() == member
    return set(inter["item_id"].to_numpy()[mask].tolist())


# ------------------------------------------------------------------------------------------ no Ray


def test_online_features_equal_the_offline_ones(world):
    """The feature store and ranking.datasets.feedback_features give the same model inputs, row for row."""
    from ranking import Featurizer, Ranker
    from ranking.datasets import feedback_features

    log = read_feedback_log(world.root / "logs" / "r0").slice(0, 400)
    ranker = Ranker.load(world.root / "ranker", device="cpu")
    featurizer = Featurizer(ranker.schema, with_labels=False, history=ranker.config.history)
    offline = featurizer(feedback_features(log, world.catalog))
    store = world.store
    rows = []
    for r in log.to_pylist():
        state = store.member_state(r["member_id"])
        item_row = store._item_rows(np.array([r["item_id"]]))
        rows.append(
            store.features(
                state,
                item_row,
                np.array([r["source"]], object),
                content_type=r["content_type"],
                position=r["position"],
                timestamp_ms=r["timestamp"],
            )
        )
    online = featurizer(pa.concat_tables(rows))
    for name in ("sparse", "dense", "hist_items", "hist_actions", "hist_mask", "calib"):
        a, b = getattr(offline, name), getattr(online, name)
        assert a.shape == b.shape and bool((a == b).all()), name


def test_member_state_recent_exclusions_and_cold_start(world):
    store, catalog = world.store, world.catalog
    member = 1
    hist = member_history(catalog, member)
    state = store.member_state(member)
    assert tuple(state.history_key) == tuple(hist[-2:]) and not state.cold_start
    assert set(state.excluded.tolist()) == rated_items(catalog, member)
    # a positive recent item of a new cluster extends the history and the key; an unknown one is counted
    new_cluster = next(c for c in range(catalog.n_clusters) if c != hist[-1])
    item = int(store.item_ids[store.cluster_items(new_cluster)[0]])
    state = store.member_state(member, [(item, 5.0), (10**9, None)], [7])
    assert state.history_key == (hist[-1], new_cluster)
    assert state.ignored_recent == 1
    assert {item, 7} <= set(state.excluded.tolist())
    assert state.hist_items[-1] == item and state.hist_actions[-1] == 5
    # a negative recent rating joins the ranker's history but not the cluster history
    assert store.member_state(member, [(item, 2.0)]).history_key == tuple(hist[-2:])
    unknown = store.member_state(10**9)
    assert unknown.cold_start and unknown.history_key is None and len(unknown.hist_items) == 0


def test_slate_rule_positions_one_per_cluster_and_ties():
    cands = Candidates(
        rows=np.arange(8),
        source=np.array(["explore"] * 4 + ["exploit"] * 4, object),
        cluster=np.array([5, 5, 6, 7, 1, 1, 2, 2]),
    )
    scores = np.array([0.9, 0.95, 0.2, 0.5, 0.3, 0.8, 0.8, 0.1])
    ids = np.array([10, 11, 12, 13, 14, 15, 16, 17])
    assert explore_positions(10, 2) == [1, 9] and explore_positions(5, 3, [4, 0, 2]) == [0, 2, 4]
    for k in range(1, 30):  # always explore_slots distinct slots below k
        for n in range(k + 1):
            assert (
                sorted(set(explore_positions(k, n))) == explore_positions(k, n)
                and len(explore_positions(k, n)) == n
            )
    assert explore_positions(3, 3) == [0, 1, 2] and explore_positions(10, 1) == [1]
    slate = assemble(cands, scores, ids, k=6, positions=[1, 3])
    # explore pool: best of cluster 5 (index 1), then cluster 7 (3); cluster 6 is third and not shown
    # exploit pool: 0.8 tie -> smaller item id (15 before 16), then 0.3, 0.1
    assert slate == [5, 1, 6, 3, 4, 7]
    # explore runs dry: its position takes the next exploit item; exploit runs dry: the slate stops
    assert assemble(cands, scores, ids, k=10, positions=[0, 1, 2, 3]) == [1, 3, 2, 5, 6, 4, 7]


def test_thompson_draws_are_per_request_inside_one_batch(world):
    from ranking import Ranker
    from serving.service import ScoreRequest, score_batch

    ranker = Ranker.load(world.root / "ranker", device="cpu")
    store = world.store
    state = store.member_state(1)
    rows = store.cluster_items(int(state.clusters[-1]))[:30]
    table = store.features(
        state, rows, np.full(len(rows), "exploit", object), content_type="movie", position=0, timestamp_ms=0
    )
    req = lambda explore, seed: ScoreRequest(table, explore, seed, "movie")  # noqa: E731
    a, b, plain = score_batch(ranker, [req(True, 1), req(True, 2), req(False, 0)])
    (alone,) = score_batch(ranker, [req(True, 1)])
    assert a.explored and b.explored and not plain.explored
    assert np.allclose(a.score, alone.score)  # the same seed draws the same sample, batched or not
    assert not np.allclose(a.score, b.score)  # two requests in one batch do not share a draw
    assert np.allclose(plain.score, plain.probabilities[ranker.rank_task])
    (bad,) = score_batch(ranker, [ScoreRequest(table, False, 0, "podcast")])
    assert bad.error["field"] == "content_type" and "podcast" in bad.error["message"]


def test_store_refuses_a_checkpoint_of_other_features(world):
    from ranking.datasets import movielens_schema

    with pytest.raises(ValueError, match="movielens-ctr.*--dataset feedback"):
        world.store.check_ranker_schema(movielens_schema())


def test_app_settings_refuse_a_redis_password():
    from serving.settings import ServingSettings

    with pytest.raises(ValueError, match="REDIS_URL in the replicas' environment"):
        ServingSettings(catalog="c", log_dir="l", redis_url="redis://:s3cret@host:6379/0")


def test_non_finite_scores_are_a_clear_503_not_a_serialisation_500(world):
    import asyncio

    from serving.api import RankRequest
    from serving.service import RankService, ScoreResult, ScoringFailed
    from serving.settings import ServingSettings

    class NoCache:
        async def lookup(self, key, exclude, top):
            return None  # degraded: exploit-only

    async def nan_scorer(req):
        nan = np.full(req.rows, np.nan, np.float32)
        return ScoreResult(probabilities={"click": nan}, score=nan, ranker_version="broken")

    service = RankService(
        world.store, NoCache(), nan_scorer, lambda rows: None, ServingSettings(catalog="c", log_dir="l")
    )
    with pytest.raises(ScoringFailed, match="non-finite scores"):
        asyncio.run(service.rank(RankRequest(member_id=1)))


def test_breaker_opens_half_opens_and_closes():
    now = [0.0]
    b = CircuitBreaker(failures=2, cooldown_s=1.0, clock=lambda: now[0])
    assert b.allow()
    b.failure("boom")
    assert b.state == "closed" and b.allow()
    b.failure("boom")
    assert b.state == "open" and not b.allow()
    now[0] = 1.5
    assert b.state == "half-open" and b.allow() and not b.allow()  # one trial at a time
    b.failure("still down")
    assert b.state == "open" and b.opened == 2
    now[0] = 3.0
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow()


def test_redis_urls_are_redacted():
    assert redact_url("redis://host:6379/0?password=s3cret&db=1") == "redis://host:6379/0?password=***&db=1"
    assert redact_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert redact_url("redis://s3cret@host:6379/0") == "redis://:***@host:6379/0"  # password in the user slot
    assert redact_url("redis://user:s3cret@host/0") == "redis://user:***@host/0"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"


def test_serving_imports_follow_the_design():
    """serving/ may import catalog, ranking and explore's cache reader; never sim/, jobs/ or the LLM code."""
    found = set()
    for path in (ROOT / "serving").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
    ours = {
        m
        for m in found
        if m.split(".")[0] in {"catalog", "explore", "alignment", "ranking", "sim", "jobs", "bench"}
    }
    assert ours, found
    assert all(m.split(".")[0] in {"catalog", "ranking", "explore"} for m in ours), ours
    assert {m for m in ours if m.startswith("explore")} <= {"explore.cache"}, ours


# ------------------------------------------------------------------------------------------ Ray Serve


@pytest.mark.slow
def test_slates_over_http_follow_the_documented_rule(app, world):
    catalog, store = world.catalog, world.store
    reader = CacheReader(redis.Redis.from_url(app.redis.url), NS, k=2)
    # members whose whole history leaves at least 3 of their key's cached clusters novel
    members = [
        m
        for m in catalog.histories["member_id"].to_pylist()
        if len(h := member_history(catalog, m)) >= 2 and len(reader.lookup(h[-2:], exclude=h).clusters) >= 3
    ][:12]
    assert len(members) == 12
    for member in members:
        hist = member_history(catalog, member)
        answer = app.client.rank(member, k=10, explore_slots=3, exclude_item_ids=[50, 100])
        hit = reader.lookup(hist[-2:], exclude=hist, top=4)
        ex = answer["exploration"]
        assert answer["history_key"] == hist[-2:] and not answer["cold_start"] and not answer["degraded"]
        assert ex["level"] == hit.level == "exact" and ex["cache_version"] == hit.version
        assert [c["cluster_id"] for c in ex["clusters"]] == list(hit.clusters)
        assert ex["models"]["novelty_model"] == "test-novelty"
        items = answer["items"]
        assert [it["position"] for it in items] == list(range(10))
        explore = [it for it in items if it["source"] == "explore"]
        exploit = [it for it in items if it["source"] == "exploit"]
        assert len(explore) == 3 and [it["position"] for it in explore] == explore_positions(10, 3)
        assert {it["cluster_id"] for it in explore} <= set(hit.clusters)
        assert len({it["cluster_id"] for it in explore}) == 3  # one per chosen cluster
        own = list(dict.fromkeys(reversed(hist)))[:4]
        assert all(it["cluster_id"] in own for it in exploit)
        for part in (explore, exploit):  # best first within each source
            scores = [it["score"] for it in part]
            assert scores == sorted(scores, reverse=True)
        assert not {it["item_id"] for it in items} & (rated_items(catalog, member) | {50, 100})
        for it in items:
            assert it["cluster_name"] == store.cluster_name(it["cluster_id"])
            assert set(it["probabilities"]) == {"click", "like", "share", "skip", "long_dwell"}
            assert it["score"] == pytest.approx(it["probabilities"]["click"])  # rank task, explore=false
        assert set(answer["timings_ms"]) >= {"history", "cache", "candidates", "features", "rank", "slate"}


@pytest.mark.slow
def test_cold_start_recent_and_handle_client(app, world):
    from serving.client import HandleClient

    store = world.store
    answer = app.client.rank(10**9, k=8, explore_slots=2, recent=[{"item_id": 10**9}, {"item_id": -5}])
    assert answer["cold_start"] and answer["history_key"] is None and answer["ignored_recent_items"] == 2
    assert answer["exploration"]["level"] == "global"
    chosen = [c["cluster_id"] for c in answer["exploration"]["clusters"]]
    outside = store.popular_rows[~np.isin(store.item_cluster[store.popular_rows], chosen)]
    popular = set(store.item_ids[outside[:100]].tolist())  # the most rated items outside the explore clusters
    assert len(answer["items"]) == 8
    assert {it["cluster_id"] for it in answer["items"] if it["source"] == "explore"} <= {3, 9, 21, 30}
    assert all(it["item_id"] in popular for it in answer["items"] if it["source"] == "exploit")
    # a known member's recent positive engagement moves the key
    hist = member_history(world.catalog, 1)
    new_cluster = next(c for c in range(world.catalog.n_clusters) if c not in hist[-2:])
    item = int(store.item_ids[store.cluster_items(new_cluster)[0]])
    moved = app.client.rank(1, recent=[{"item_id": item, "rating": 5}])
    assert moved["history_key"] == [hist[-1], new_cluster]
    # the DeploymentHandle client gives the same slate as HTTP (explore=false is deterministic)
    via_http = app.client.rank(2, k=6)
    via_handle = HandleClient().rank(2, k=6)
    assert [it["item_id"] for it in via_handle["items"]] == [it["item_id"] for it in via_http["items"]]
    with pytest.raises(Exception, match="k\\s+Input should be greater than or equal to 1"):
        HandleClient().rank(2, k=0)


BAD_REQUESTS = [
    ({}, 422, ["member_id", "Field required"]),
    ({"member_id": "7"}, 422, ["member_id", "integer", '"7"']),
    ({"member_id": 1, "k": 0}, 422, ["k", "0", "ge 1"]),
    ({"member_id": 1, "k": 101}, 422, ["k", "101", "le 100"]),
    ({"member_id": 1, "explore_slots": -1}, 422, ["explore_slots", "-1"]),
    ({"member_id": 1, "k": 4, "explore_slots": 5}, 422, ["explore_slots=5 is more than k=4"]),
    ({"member_id": 1, "explore": "yes"}, 422, ["explore", "yes"]),
    ({"member_id": 1, "order": "random"}, 422, ["order", "random", "'ranked' or 'shuffled'"]),
    ({"member_id": 1, "recent": [{"item_id": 1}] * 201}, 422, ["recent", "max_length 200"]),
    ({"member_id": 1, "recent": [{"item_id": 1, "rating": 6}]}, 422, ["recent.0.rating", "6", "le 5"]),
    ({"member_id": 1, "exclude_item_ids": list(range(1001))}, 422, ["exclude_item_ids", "max_length 1000"]),
    (
        {"member_id": 1, "exclude_item_ids": [2**70]},
        422,
        ["exclude_item_ids.0", str(2**70), "le 9223372036854775807"],
    ),
    ({"member_id": 1, "content_type": "podcast"}, 422, ["content_type='podcast'", "movie"]),
    ({"member_id": 1, "kk": 3}, 422, ["kk", "Extra inputs"]),
    ([1, 2], 422, ["body", "dictionary"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("body,status,words", BAD_REQUESTS)
def test_bad_requests_get_their_4xx_with_the_field(app, body, status, words):
    import requests

    r = requests.post(f"{app.url}/rank", json=body, timeout=30)
    assert r.status_code == status, r.text
    message = r.json()["error"]
    for w in words:
        assert w in message, (w, message)


@pytest.mark.slow
def test_malformed_oversized_and_wrong_method(app):
    import requests

    r = requests.post(
        f"{app.url}/rank", data=b'{"member_id": 1,', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    big = b'{"member_id": 1, "exclude_item_ids": [' + b"1," * 200_000 + b"1]}"
    r = requests.post(f"{app.url}/rank", data=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "262144" in r.json()["error"]
    assert requests.get(f"{app.url}/rank").status_code == 405
    assert requests.get(f"{app.url}/healthz").json() == {"status": "ok"}
    ready = requests.get(f"{app.url}/readyz").json()
    assert ready["ready"] and ready["ranker"]["loaded"] and ready["feature_store"]["items"] == 1682
    assert ready["redis"]["reachable"] and "live_version" in ready["redis"]
    assert app.client.rank(1)["items"]  # the replica still serves after all of the above


@pytest.mark.slow
def test_a_corrupt_cache_entry_is_a_miss_not_an_error(app, world):
    from explore.cache import CacheKeys, live_version

    client = redis.Redis.from_url(app.redis.url)
    hist = member_history(world.catalog, 7)
    data = CacheKeys(NS).data(live_version(client, NS))
    field = key_field(hist[-2:])
    good = client.hget(data, field)
    client.hset(data, field, b"17:0.9;not-a-cluster")
    try:
        for _ in range(5):  # more than the breaker's failures: Redis answered, the circuit stays closed
            answer = app.client.rank(7, k=5)
            assert answer["exploration"]["level"] == "miss" and not answer["degraded"]
            assert {it["source"] for it in answer["items"]} == {"exploit"}
        assert app.client.readyz()["redis"]["circuit"] == "closed"
    finally:
        client.hset(data, field, good)
        client.close()
    assert app.client.rank(7, k=5)["exploration"]["level"] == "exact"


@pytest.mark.slow
def test_requests_are_batched_across_clients(app):
    from serving.client import HandleClient
    from serving.deploy import ranker_info

    before = ranker_info()["batch_stats"]
    client = HandleClient()
    with cf.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda m: client.rank(m, k=5), range(1, 49)))
    after = ranker_info()["batch_stats"]
    assert all(len(a["items"]) == 5 for a in answers)
    batches, requests_ = after["batches"] - before["batches"], after["requests"] - before["requests"]
    assert requests_ == 48 and batches < requests_  # several requests shared a forward pass
    assert after["max_requests"] > 1


@pytest.mark.slow
def test_impressions_logged_equal_what_was_served(app, world):
    from serving.deploy import logger_flush

    answers = [app.client.rank(m, k=7, explore_slots=2) for m in (3, 4, 5)]
    ids, deadline = {a["request_id"] for a in answers}, time.monotonic() + 30
    while True:  # the ingress sends the rows after answering: wait for them (bounded)
        logger_flush()
        log = read_impression_log(world.root / "impressions")
        if ids <= set(log["request_id"].to_pylist()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for answer in answers:
        rows = [r for r in log.to_pylist() if r["request_id"] == answer["request_id"]]
        rows.sort(key=lambda r: r["position"])
        assert [(r["item_id"], r["cluster_id"], r["source"], r["position"]) for r in rows] == [
            (it["item_id"], it["cluster_id"], it["source"], it["position"]) for it in answer["items"]
        ]
        assert [r["score"] for r in rows] == pytest.approx([it["score"] for it in answer["items"]], rel=1e-6)
        assert {r["ranker_version"] for r in rows} == {answer["ranker_version"]}
        assert {r["cache_version"] for r in rows} == {answer["exploration"]["cache_version"]}
        assert {tuple(r["history_key"]) for r in rows} == {tuple(answer["history_key"])}


def test_shuffled_share_picks_that_share_of_request_ids():
    import uuid

    from serving.service import in_share

    rng = np.random.default_rng(0)  # request ids as the endpoint makes them: uuid4 hex (version, variant set)
    ids = [uuid.UUID(int=int.from_bytes(rng.bytes(16), "big"), version=4).hex for _ in range(20_000)]
    for share in (0.0, 0.05, 0.3, 1.0):
        picked = np.mean([in_share(i, share) for i in ids])
        assert abs(picked - share) < 0.015, (share, picked)


@pytest.mark.slow
def test_shuffled_slates_are_the_ranked_items_in_a_logged_random_order(app, world):
    """Replay traffic (order=shuffled): the items the ranked answer has, in another order, logged with
    shuffled=true; a ranked answer is logged shuffled=false."""
    from serving.deploy import logger_flush

    ranked = app.client.rank(6, k=8, explore_slots=2)
    shuffled = [app.client.rank(6, k=8, explore_slots=2, order="shuffled") for _ in range(4)]
    assert ranked["order"] == "ranked" and {a["order"] for a in shuffled} == {"shuffled"}
    served = [it["item_id"] for it in ranked["items"]]
    orders = [[it["item_id"] for it in a["items"]] for a in shuffled]
    for order, answer in zip(orders, shuffled, strict=True):
        assert sorted(order) == sorted(served)  # the same items ...
        assert [it["position"] for it in answer["items"]] == list(range(len(served)))
    assert any(order != served for order in orders)  # ... not in the ranker's order (4 draws of 8! orders)
    ids, deadline = {a["request_id"] for a in [ranked, *shuffled]}, time.monotonic() + 30
    while True:
        logger_flush()
        log = read_impression_log(world.root / "impressions")
        if ids <= set(log["request_id"].to_pylist()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    flags = {r["request_id"]: r["shuffled"] for r in log.to_pylist() if r["request_id"] in ids}
    assert flags == {a["request_id"]: a["order"] == "shuffled" for a in [ranked, *shuffled]}


@pytest.mark.slow
def test_redis_down_degrades_then_recovers(app, world):
    from jobs.services import RedisServer

    port = app.redis.port
    app.redis.stop()
    try:
        for member in (1, 2, 3):
            t0 = time.perf_counter()
            answer = app.client.rank(member, k=6, explore_slots=2)
            assert answer["degraded"] and answer["exploration"]["level"] == "degraded"
            assert len(answer["items"]) == 6 and {it["source"] for it in answer["items"]} == {"exploit"}
            assert time.perf_counter() - t0 < 5
        import requests

        ready = requests.get(f"{app.url}/readyz").json()
        assert (
            ready["ready"]
            and not ready["redis"]["reachable"]
            and ready["redis"]["circuit"] in ("open", "half-open")
        )
    finally:
        app.redis = RedisServer.start(port=port, password=app.redis.password)  # a restart keeps its password
        publish(app.redis.url, world.catalog)
    deadline = time.monotonic() + 15
    while True:
        answer = app.client.rank(1, k=6, explore_slots=2)
        if not answer["degraded"]:
            break
        assert time.monotonic() < deadline, "the endpoint did not recover after Redis came back"
        time.sleep(0.2)
    assert answer["exploration"]["level"] == "exact"
    n_explore = sum(it["source"] == "explore" for it in answer["items"])
    assert n_explore == min(2, len(answer["exploration"]["clusters"])) and n_explore >= 1


@pytest.mark.slow
def test_hot_reload_under_load_and_a_bad_checkpoint_keeps_the_old(app, world, tmp_path):
    import requests

    from ranking.checkpoint import checkpoint_version
    from serving.deploy import reload_ranker

    v1, v2 = (checkpoint_version(world.root / n) for n in ("ranker", "ranker2"))
    assert v1 != v2
    seen: dict[int, list[str]] = {1: [], 2: [], 3: []}
    failures, stop = [], threading.Event()

    def loop(member: int):
        session = requests.Session()
        while not stop.is_set():
            try:
                r = session.post(f"{app.url}/rank", json={"member_id": member, "k": 5}, timeout=30)
                if r.status_code == 200:
                    seen[member].append(r.json()["ranker_version"])
                else:
                    failures.append(r.text)
            except Exception as exc:  # noqa: BLE001 - every failure counts
                failures.append(repr(exc))

    threads = [threading.Thread(target=loop, args=(m,)) for m in seen]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        info = reload_ranker(app.config, str(world.root / "ranker2"))
        assert info["version"] == v2 and info["reload_error"] is None
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:3]
    for versions in seen.values():  # each client saw the old model, then the new one, never back
        assert versions[0] == v1 and versions[-1] == v2
        assert v1 not in versions[versions.index(v2) :]

    broken = tmp_path / "broken"
    shutil.copytree(world.root / "ranker2", broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    info = reload_ranker(app.config, str(broken))
    assert info["version"] == v2 and str(broken) in info["reload_error"]["ranker"]
    assert "safetensors" in info["reload_error"]["error"]
    assert app.client.rank(1)["ranker_version"] == v2
    ready = requests.get(f"{app.url}/readyz").json()
    assert ready["ranker"]["reload_error"]["ranker"] == str(broken)
    info = reload_ranker(app.config, str(world.root / "ranker"))
    assert info["version"] == v1 and info["reload_error"] is None and info["reloads"] >= 2


@pytest.mark.slow
def test_client_raises_with_status_and_message(app):
    with pytest.raises(RankError) as err:
        app.client.rank(1, k=0)
    assert err.value.status == 422 and "k" in err.value.message


@pytest.mark.slow
def test_serve_job_runs_a_run_folder_and_stops_on_sigterm(world, tmp_path):
    """`python -m jobs.serve --run RUN`: its own Ray and the run's saved Redis, a curl example, answers,
    `reload` and `status` from another process, a clean stop on SIGTERM with the impressions flushed."""
    import os
    import signal
    import subprocess
    import sys

    from jobs.services import RedisServer, free_port

    run = tmp_path / "run"
    shutil.copytree(world.root / "catalog", run / "catalog")
    shutil.copytree(world.root / "ranker", run / "ranker" / "feedback")
    server = RedisServer.start(data_dir=run / "redis")
    publish(server.url, world.catalog)
    server.save()
    server.stop()
    assert (run / "redis" / "dump.rdb").is_file()  # the caller's data folder outlives the server
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "", "REDIS_URL": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.serve", "--run", str(run), "--port", str(port), "--num-cpus", "2",
         "--ingress-cpus", "0.25", "--ranker-cpus", "0.25"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    import queue

    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(
        target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True
    )
    reader.start()  # drains the pipe for the whole run, so the server never blocks on it
    out = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            out.append(line)
            if "Ctrl-C stops it" in line:
                break
        text = "".join(out)
        assert "curl -s -X POST" in text and f"127.0.0.1:{port}" in text, text
        client = RankClient(f"http://127.0.0.1:{port}")
        answer = client.rank(1, k=5)
        assert len(answer["items"]) == 5 and answer["exploration"]["cache_version"]  # the saved cache
        res = subprocess.run(
            [sys.executable, "-m", "jobs.serve", "reload", "--run", str(run), "--ranker", str(world.root / "ranker2")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        from ranking.checkpoint import checkpoint_version

        assert client.rank(1, k=5)["ranker_version"] == checkpoint_version(world.root / "ranker2")
        res = subprocess.run(
            [sys.executable, "-m", "jobs.serve", "status", "--run", str(run)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert res.returncode == 0 and '"ranking": "RUNNING"' in res.stdout, res.stdout + res.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        reader.join(timeout=10)
    rest = ""
    while not lines.empty():
        rest += lines.get() or ""
    assert proc.returncode == 0, "".join(out) + rest
    assert "[serve] stopped" in rest
    assert read_impression_log(run / "logs" / "serving" / "impressions").num_rows >= 10


def test_serve_job_names_a_missing_run(tmp_path):
    import os
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "jobs.serve", "--run", str(tmp_path / "nope")],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2 and "make demo" in res.stderr and "Traceback" not in res.stderr


def test_replicas_never_read_serving_pt2(world, tmp_path):
    """A tampered serving.pt2 (it can carry pickled code) beside the weights changes nothing: loading reads
    safetensors and JSON only, and the version hashes only those."""
    from ranking import Ranker
    from ranking.checkpoint import checkpoint_version

    folder = tmp_path / "ckpt"
    shutil.copytree(world.root / "ranker", folder)
    before = checkpoint_version(folder)
    (folder / "serving.pt2").write_bytes(b"PK\x03\x04 a crafted archive that must never be unpickled")
    ranker = Ranker.load(folder, device="cpu")
    assert ranker.version == before == checkpoint_version(folder)
    world.store.check_ranker_schema(ranker.schema)


def test_feedback_logs_extend_the_store(world):
    """Clicked and liked items from feedback logs are never recommended again; liked ones extend the
    cluster history (and so the key); the ranker's rating history is left as training saw it."""
    catalog = world.catalog
    log = read_feedback_log(world.root / "logs" / "r0")
    member = 1
    rows = log.filter(pa.compute.equal(log["member_id"], member)).to_pylist()
    liked = [r for r in rows if r["like"]]
    clicked_only = [r for r in rows if r["click"] and not r["like"]]
    assert liked, "the simulated round gave member 1 no like; pick another member"
    store = OnlineFeatureStore(catalog, feedback_log=log)
    state, plain = store.member_state(member), world.store.member_state(member)
    assert {r["item_id"] for r in liked + clicked_only} <= set(state.excluded.tolist())
    assert state.clusters[-1] in {r["cluster_id"] for r in liked}  # the log's likes come after the catalog's
    assert np.array_equal(state.hist_items, plain.hist_items)
    assert len(state.clusters) >= len(plain.clusters)


# ------------------------------------------------------------------------------------------ feedback

GOOD_ID = "0123456789abcdef0123456789abcdef"
BAD_FEEDBACK = [
    ({"request_id": "r1", "events": [{"item_id": 1}]}, ["request_id", "r1", "pattern"]),
    ({"request_id": GOOD_ID, "events": []}, ["events", "at least 1"]),
    ({"request_id": GOOD_ID, "events": [{"item_id": 1, "dwell_s": -1}]}, ["events.0.dwell_s", "-1", "ge 0"]),
    ({"request_id": GOOD_ID, "events": [{"item_id": 1, "dwell_s": 1e9}]}, ["events.0.dwell_s", "le 86400"]),
    ({"request_id": GOOD_ID, "events": [{"item_id": 1, "click": "yes"}]}, ["events.0.click", "yes"]),
    ({"request_id": GOOD_ID, "events": [{"item_id": 2**70}]}, ["events.0.item_id", str(2**70)]),
    (
        {"request_id": GOOD_ID, "events": [{"item_id": 1, "clicks": True}]},
        ["events.0.clicks", "Extra inputs"],
    ),
    ({"request_id": GOOD_ID}, ["events", "Field required"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("body,words", BAD_FEEDBACK)
def test_bad_feedback_gets_a_422_naming_the_field(app, body, words):
    import requests

    r = requests.post(f"{app.url}/feedback", json=body, timeout=30)
    assert r.status_code == 422, r.text
    message = r.json()["error"]
    for w in words:
        assert w in message, (w, message)


@pytest.mark.slow
def test_non_finite_dwell_is_a_422(app):
    import requests

    for literal in (b"NaN", b"Infinity"):
        body = b'{"request_id": "%s", "events": [{"item_id": 1, "dwell_s": %s}]}' % (
            GOOD_ID.encode(),
            literal,
        )
        r = requests.post(f"{app.url}/feedback", data=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and "events.0.dwell_s" in r.json()["error"], r.text


@pytest.mark.slow
def test_feedback_is_logged_and_joins_with_what_was_served(app, world):
    from catalog.join import join_feedback
    from catalog.logs import read_event_log
    from serving.deploy import logger_flush

    answers = [app.client.rank(m, k=6, explore_slots=2) for m in (8, 9)]
    reported = {
        answers[0]["request_id"]: [
            {"item_id": answers[0]["items"][0]["item_id"], "click": True, "dwell_s": 42.5},
            {"item_id": answers[0]["items"][3]["item_id"], "skip": True},
        ],
        answers[1]["request_id"]: [
            {"item_id": answers[1]["items"][1]["item_id"], "click": True, "like": True}
        ],
    }
    for request_id, events in reported.items():
        assert app.client.feedback(request_id, events) == {"request_id": request_id, "accepted": len(events)}
    ids, deadline = set(reported), time.monotonic() + 30
    while True:  # the ingress logs impressions after answering: wait for them (bounded)
        stats = logger_flush()
        impressions = read_impression_log(world.root / "impressions")
        events = read_event_log(world.root / "events")
        if ids <= set(impressions["request_id"].to_pylist()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert stats["events"]["rows_written"] >= 3 and stats["events"]["folder"] == str(world.root / "events")
    import pyarrow.compute as pc

    mine = pc.is_in(impressions["request_id"], pa.array(sorted(ids)))
    ev_mine = pc.is_in(events["request_id"], pa.array(sorted(ids)))
    feedback, quarantine, counts = join_feedback(impressions.filter(mine), events.filter(ev_mine))
    assert feedback.num_rows == 12 and quarantine.num_rows == 0 and counts["engaged_impressions"] == 3
    got = {(r["request_id"], r["item_id"]): r for r in feedback.to_pylist()}
    for request_id, evs in reported.items():
        for e in evs:
            row = got[(request_id, e["item_id"])]
            assert all(row[f] == e.get(f, False) for f in ("click", "like", "share", "skip"))
            assert row["dwell_s"] == pytest.approx(e.get("dwell_s", 0.0))
    assert sum(r["click"] or r["skip"] for r in got.values()) == 3  # the other 9 served items: no engagement
