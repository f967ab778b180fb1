"""Formula checks for every ranker module, on tiny seeded tensors."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from ranking.bandit import BayesianLastLayer
from ranking.hashing import field_seed, hash_ids
from ranking.incremental import IncrementalPrior
from ranking.labels import fit_long_dwell, long_dwell_labels, position_bucket
from ranking.layers.calibration import IsotonicCalibration
from ranking.layers.crossnet import AttentionLowRankCross, LowRankCross, build_cross
from ranking.layers.embeddings import QREmbedding
from ranking.layers.heads import MMoEHeads, TaskGroupHeads
from ranking.layers.mlp import GatedLayer
from ranking.layers.quantization import QuantizedEmbedding, middle_max_dequantize, middle_max_quantize
from ranking.layers.transact import TransAct
from ranking.metrics import auc, ece, logloss, observed_expected
from ranking.schema import LongDwellSpec


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --- hashing and QR embeddings ---------------------------------------------------------------


def test_hash_ids_ints_and_strings():
    ids = np.arange(10_000)
    h = hash_ids(ids, seed=1)
    assert h.dtype == np.int64 and (h >= 0).all()
    assert len(np.unique(h)) == len(ids)  # no collisions among 10k ids in 2^63
    assert np.array_equal(h, hash_ids(ids, seed=1))
    assert not np.array_equal(h, hash_ids(ids, seed=2))
    s = hash_ids(["a", "b", "a", None])
    assert s[0] == s[2] and s[0] != s[1] and (s >= 0).all()
    assert field_seed("item_id") != field_seed("member_id")


def test_qr_split_unique_under_divisor():
    emb = QREmbedding(buckets=1000, dim=4)
    assert emb.divisor == 32 and emb.quotient.num_embeddings == 32
    idx = torch.arange(1000)
    q, r = emb.split(idx)
    pairs = set(zip(q.tolist(), r.tolist(), strict=True))
    assert len(pairs) == 1000  # every index < N has its own (quotient, remainder)
    assert q.max() < emb.quotient.num_embeddings and r.max() < emb.divisor
    out = emb(idx)
    assert torch.allclose(out, emb.quotient.weight[idx // 32] + emb.remainder.weight[idx % 32])
    assert len({tuple(row) for row in out.detach().numpy().round(6).tolist()}) == 1000
    # ids beyond N wrap into the hash space: no out-of-vocabulary failure
    assert torch.equal(emb(torch.tensor([5, 1005, 2_000_005])), emb(torch.tensor([5, 5, 5])))


# --- cross network ---------------------------------------------------------------------------


def test_low_rank_cross_matches_explicit_loop():
    layer = LowRankCross(dim=6, rank=3)
    x0, xl = torch.randn(4, 6), torch.randn(4, 6)
    U, V, b = layer.U.weight, layer.V.weight, layer.U.bias
    expected = torch.stack([x0[i] * (U @ (V @ xl[i]) + b) + xl[i] for i in range(4)])
    assert torch.allclose(layer(x0, xl), expected, atol=1e-6)


def test_attention_cross_with_identity_scores_is_dcnv2():
    attn = AttentionLowRankCross(dim=6, rank=3, temperature=0.7)
    plain = LowRankCross(dim=6, rank=3)
    plain.load_state_dict({k: v for k, v in attn.state_dict().items() if k.startswith(("U.", "V."))})
    x0, xl = torch.randn(5, 6), torch.randn(5, 6)
    eye = torch.eye(3).expand(5, 3, 3)
    assert torch.equal(attn(x0, xl, scores=eye), plain(x0, xl))
    assert not torch.allclose(attn(x0, xl), plain(x0, xl))  # the learned scores do change it


def test_attention_scores_formula():
    layer = AttentionLowRankCross(dim=6, rank=3, temperature=2.0)
    xl = torch.randn(2, 6)
    with torch.no_grad():
        q, k = layer.Q.weight @ xl[0], layer.K.weight @ xl[0]
    logits = torch.tensor([[q[i] * k[j] / (2.0 * math.sqrt(3)) for j in range(3)] for i in range(3)])
    assert torch.allclose(layer.scores(xl)[0], torch.softmax(logits, dim=1), atol=1e-6)
    assert torch.allclose(layer.scores(xl).sum(-1), torch.ones(2, 3))


def test_residual_dcn_widths():
    for kind, width in (("none", 10), ("dcnv2", 10), ("residual", 20)):
        net, d = build_cross(kind, 10, layers=2, rank=4, temperature=1.0)
        assert d == width and net(torch.randn(3, 10)).shape == (3, width)
    with pytest.raises(ValueError, match="cross='dcn'"):
        build_cross("dcn", 10, 2, 4, 1.0)


# --- gated MLP, heads ------------------------------------------------------------------------


def test_gated_layer_formula():
    layer = GatedLayer(5, 4, gated=True)
    h = torch.randn(3, 5)
    expected = torch.nn.functional.silu(h @ layer.linear.weight.T + layer.linear.bias) * torch.sigmoid(
        h @ layer.gate.weight.T + layer.gate.bias
    )
    assert torch.allclose(layer(h), expected, atol=1e-6)


def test_task_groups_share_towers():
    heads = TaskGroupHeads(8, groups=[[0, 2], [1]], width=4)
    logits, phi = heads(torch.randn(5, 8))
    assert logits.shape == (5, 3) and phi.shape == (5, 3, 4)
    assert torch.equal(phi[:, 0], phi[:, 2]) and not torch.equal(phi[:, 0], phi[:, 1])
    assert torch.allclose(logits[:, 1], heads.heads[1](phi[:, 1]).squeeze(1))


def test_mmoe_heads_mix_experts():
    heads = MMoEHeads(8, n_tasks=3, n_experts=4, width=6)
    x = torch.randn(5, 8)
    logits, phi = heads(x)
    assert logits.shape == (5, 3) and phi.shape == (5, 3, 6)
    gates = torch.softmax(heads.gates(x).view(5, 3, 4), -1)
    experts = torch.stack([e(x) for e in heads.experts], 1)
    assert torch.allclose(phi[:, 1], heads.towers[1]((gates[:, 1, :, None] * experts).sum(1)), atol=1e-6)


# --- TransAct --------------------------------------------------------------------------------


def test_transact_shapes_padding_and_empty_history():
    enc = TransAct(item_dim=4, n_actions=6, action_dim=2, layers=2, heads=2, last_k=3).eval()
    B, L = 3, 6
    items, cand = torch.randn(B, L, 4), torch.randn(B, 4)
    actions = torch.randint(1, 6, (B, L))
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, :4] = False  # short history, left-padded
    mask[2] = False  # empty history
    out = enc(items, actions, mask, cand)
    assert out.shape == (B, 4 * enc.width) and torch.isfinite(out).all()
    assert enc.encoder[0].ff[0].out_features == enc.width // 2  # feed-forward = half the width
    # what sits in padded slots does not matter
    items2, actions2 = items.clone(), actions.clone()
    items2[1, :4], actions2[1, :4] = torch.randn(4, 4), 1
    items2[2], actions2[2] = torch.randn(L, 4), 2
    assert torch.allclose(enc(items2, actions2, mask, cand), out, atol=1e-6)
    # the candidate is fused into every token: changing it changes the output
    assert not torch.allclose(enc(items, actions, mask, torch.randn(B, 4)), out)


# --- isotonic calibration --------------------------------------------------------------------


def test_isotonic_layer_matches_eq1_and_starts_as_identity():
    iso = IsotonicCalibration(n_tasks=2, n_buckets=8, lo=-4.0, hi=4.0, calib_vocab=(3,))
    z = torch.linspace(-3.9, 3.9, 11).unsqueeze(1).repeat(1, 2)
    c = torch.zeros(11, 1, dtype=torch.long)
    assert torch.allclose(iso(z, c), z, atol=1e-5)  # identity at initialisation
    with torch.no_grad():
        iso.weight.normal_()
        iso.features[0].weight.normal_()
    c = torch.randint(0, 4, (11, 1))
    step, out = 1.0, iso(z, c).detach()
    with torch.no_grad():
        _check_eq1(iso, z, c, out, step)


def _check_eq1(iso, z, c, out, step):
    for n in range(11):
        for t in range(2):
            e = iso.features[0].weight[c[n, 0]].view(2, 8)[t]
            w = torch.relu(iso.weight[t] + e)
            y = -4.0 + sum(w[i] * min(max(float(z[n, t]) - (-4.0 + i * step), 0.0), step) for i in range(8))
            assert abs(float(out[n, t]) - float(y)) < 1e-5


def test_isotonic_layer_is_monotone_on_random_inputs():
    iso = IsotonicCalibration(n_tasks=3, n_buckets=16, lo=-8.0, hi=8.0, calib_vocab=(5, 4))
    with torch.no_grad():
        iso.weight.normal_(0, 2)  # many negative raw weights
        for emb in iso.features:
            emb.weight.normal_(0, 2)
    z = torch.sort(torch.randn(500, 3) * 6, dim=0).values
    c = torch.stack([torch.randint(0, 6, (1,)).expand(500), torch.randint(0, 5, (1,)).expand(500)], 1)
    y = iso(z, c)
    assert (y[1:] - y[:-1] >= -1e-6).all()


# --- quantization ----------------------------------------------------------------------------


def test_middle_max_round_trip_and_int8_range():
    w = torch.randn(200, 16) * torch.rand(200, 1) * 5 + torch.randn(200, 1) * 3
    w[7] = 0.25  # a constant row
    q, middle, scale = middle_max_quantize(w)
    assert q.dtype == torch.int8
    rows = torch.arange(200) != 7
    assert (q[rows].max(dim=1).values == 127).all() and (q[rows].min(dim=1).values == -128).all()
    err = (middle_max_dequantize(q, middle, scale) - w).abs()
    assert (err <= scale[:, None] / 2 + 1e-5).all()
    assert torch.equal(middle_max_dequantize(q, middle, scale)[7], w[7])
    table = QuantizedEmbedding(w)
    ids = torch.tensor([[3, 7], [199, 0]])
    assert torch.allclose(table(ids), middle_max_dequantize(q, middle, scale)[ids])
    assert table.nbytes() < w.numel() * 4 / 2.5


# --- Bayesian last layer ---------------------------------------------------------------------


def test_blr_incremental_posterior_equals_closed_form():
    phi, y = torch.randn(300, 4), (torch.rand(300) < 0.3).float()
    blr = BayesianLastLayer(4, prior_precision=2.0, noise=0.5)
    blr.update(phi[:120], y[:120])
    blr.update(phi[120:], y[120:])  # two training periods
    X = np.c_[phi.numpy().astype(np.float64), np.ones(300)]
    A = 2.0 * np.eye(5) + X.T @ X / 0.25
    mu = np.linalg.solve(A, X.T @ y.numpy() / 0.25)
    assert np.allclose(blr.mean.numpy(), mu, atol=1e-8)
    assert np.allclose(blr.covariance.numpy(), np.linalg.inv(A), atol=1e-10)
    g = torch.Generator().manual_seed(0)
    draws = blr.sample_weights(20_000, g).numpy()
    assert np.allclose(draws.mean(0), mu, atol=0.01)
    assert np.allclose(np.cov(draws.T), np.linalg.inv(A), atol=5e-4)
    restored = BayesianLastLayer.from_state_dict(blr.state_dict())
    assert torch.allclose(restored.mean, blr.mean) and restored.n_seen == 300
    with pytest.raises(ValueError, match="phi must be"):
        blr.update(torch.randn(3, 5), torch.zeros(3))


# --- incremental training prior --------------------------------------------------------------


def test_fisher_prior_initialisation_and_gradient():
    model = torch.nn.Linear(3, 2)
    w0 = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    wp = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    h0 = {k: torch.rand_like(v) for k, v in model.state_dict().items()}
    hp = {k: torch.rand_like(v) for k, v in model.state_dict().items()}
    prior = IncrementalPrior(w0, h0, wp, hp, alpha=0.3, forgetting_factor=2.0)
    init = prior.initial_state()
    assert torch.allclose(init["weight"], 0.3 * w0["weight"] + 0.7 * wp["weight"])
    prior.penalty(model).backward()
    for name, p in model.named_parameters():
        expected = 2.0 * (0.3 * h0[name] * (p - w0[name]) + 0.7 * hp[name] * (p - wp[name]))
        assert torch.allclose(p.grad, expected, atol=1e-6)


# --- metrics and labels ----------------------------------------------------------------------


def test_metrics_against_definitions():
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.4
    p = np.round(rng.random(400), 1)  # many ties
    pos, neg = p[y], p[~y]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        len(pos) * len(neg)
    )
    assert auc(y, p) == pytest.approx(brute)
    assert math.isnan(auc(np.ones(5), np.arange(5)))
    assert logloss([1, 0], [0.8, 0.3]) == pytest.approx(-(math.log(0.8) + math.log(0.7)) / 2)
    assert observed_expected([1, 0, 1], [0.5, 0.5, 0.5]) == pytest.approx(2 / 1.5)
    # two bins: predictions 0.15 (3 rows, 1 positive) and 0.85 (1 row, positive)
    assert ece([1, 0, 0, 1], [0.15, 0.15, 0.15, 0.85], bins=2) == pytest.approx(
        0.75 * abs(1 / 3 - 0.15) + 0.25 * abs(1 - 0.85)
    )


def test_long_dwell_percentiles_per_group():
    rng = np.random.default_rng(1)
    n = 4000
    pos = rng.integers(0, 12, n)
    ctype = np.where(rng.random(n) < 0.5, "movie", "trailer")
    dwell = np.where(rng.random(n) < 0.6, rng.lognormal(3, 1, n) * np.where(ctype == "movie", 3, 1), 0.0)
    t = pa.table(
        {"dwell_s": dwell.astype(np.float32), "position_bucket": position_bucket(pos), "content_type": ctype}
    )
    spec = fit_long_dwell(t, LongDwellSpec(percentile=75.0))
    key = "0|movie"
    sel = (position_bucket(pos) == "0") & (ctype == "movie") & (dwell > 0)
    assert spec.thresholds[key] == pytest.approx(np.percentile(dwell[sel].astype(np.float32), 75), rel=1e-5)
    labels = long_dwell_labels(t, spec)
    assert not labels[dwell == 0].any()
    assert labels[dwell > 0].mean() == pytest.approx(0.25, abs=0.02)  # a quarter of clicks per group
    assert list(position_bucket(np.array([0, 1, 2, 3, 4, 5, 9, 10, 50]))) == [
        "0", "1", "2", "3-4", "3-4", "5-9", "5-9", "10+", "10+",
    ]  # fmt: skip


def test_hash_ids_refuses_floats():
    with pytest.raises(ValueError, match="float64 ids"):
        hash_ids(np.array([10.0, 11.0]))
    assert hash_ids([]).shape == (0,)


def test_incremental_prior_refuses_another_architecture():
    w = {"a": torch.zeros(3, 2), "b": torch.zeros(4)}
    w0 = {"a": torch.zeros(5, 2), "b": torch.zeros(4)}
    with pytest.raises(ValueError, match=r"w0\['a'\] has shape \(5, 2\), the previous model's has \(3, 2\)"):
        IncrementalPrior(w0, w, w, w, 0.5, 1.0)
    with pytest.raises(ValueError, match=r"H0\['b'\] has shape none \(missing\)"):
        IncrementalPrior(w, {"a": w["a"]}, w, w, 0.5, 1.0)
