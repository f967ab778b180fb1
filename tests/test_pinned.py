"""Behaviour pinned to exact values or to distributions: the id hash (a persisted contract) and the
Thompson-sampling draw of the Bayesian last layer."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from ranking.bandit import BayesianLastLayer
from ranking.features import Featurizer
from ranking.hashing import field_seed, hash_ids
from ranking.layers.embeddings import QREmbedding
from ranking.schema import FeatureSchema, SparseField

# --- the id hash: golden values ----------------------------------------------------------------
#
# Every saved checkpoint stores QR embedding rows indexed by these hashes. If any value below changes,
# every saved checkpoint silently maps each id to another id's embedding rows: the change needs a
# checkpoint format bump (and a migration or retraining), not an update of these numbers.

INT_IDS = np.array([0, 1, -1, 10, 42, 2**31, 2**62 + 3, 2**63 - 1, -(2**63)], np.int64)
STR_IDS = ["", "a", "10", "item-42", "héllo", None]
ITEM_SEED = 309285470  # field_seed("item_id")

GOLDEN_INT = {
    0: [0, 6497390783113553302, 3628415883707232144, 3616594056771299718, 4648907443158461670,
        8205388164634715203, 2157593887517045520, 6186994777508574965, 5169010906190369353],
    ITEM_SEED: [7147299981465501124, 2731281923827428298, 7819920536840943008, 7281923552416909271,
                7988751484807340967, 3168560740979069874, 5503867762957280659, 7266192830912683660,
                2085622024520884577],
}  # fmt: skip
GOLDEN_STR = {
    0: [0, 4803839638238968900, 8574411096284787783, 8260824912537161369, 2817209961841602117, 0],
    ITEM_SEED: [7422835191295456548, 4121684037968865897, 4013945639137647244, 2547263527458675547,
                4229186584667645591, 7422835191295456548],
}  # fmt: skip
# QREmbedding(buckets=2**16) (the SparseField default): divisor 256, (quotient, remainder) of the
# item-seeded hashes above
GOLDEN_QR_INT = (
    [61, 235, 181, 71, 227, 83, 229, 94, 97],
    [196, 202, 160, 215, 167, 178, 147, 140, 97],
)
GOLDEN_QR_STR = ([53, 42, 26, 155, 102, 53], [36, 105, 140, 91, 151, 36])


def test_field_seeds_are_pinned():
    assert field_seed("item_id") == ITEM_SEED
    assert field_seed("member_id") == 1972884478


@pytest.mark.parametrize("seed", [0, ITEM_SEED])
def test_hash_ids_golden_values(seed):
    assert hash_ids(INT_IDS, seed).tolist() == GOLDEN_INT[seed]
    # int32 and uint8 ids hash like the same int64 values
    assert hash_ids(INT_IDS[:5].astype(np.int32), seed).tolist() == GOLDEN_INT[seed][:5]
    assert hash_ids(np.array([0, 1, 10, 42], np.uint8), seed).tolist() == [
        GOLDEN_INT[seed][i] for i in (0, 1, 3, 4)
    ]
    assert hash_ids(STR_IDS, seed).tolist() == GOLDEN_STR[seed]


def test_qr_indices_golden_values():
    emb = QREmbedding(buckets=1 << 16, dim=4)
    assert emb.divisor == 256 and emb.quotient.num_embeddings == 256
    for hashed, (q_gold, r_gold) in (
        (GOLDEN_INT[ITEM_SEED], GOLDEN_QR_INT),
        (GOLDEN_STR[ITEM_SEED], GOLDEN_QR_STR),
    ):
        q, r = emb.split(torch.tensor(hashed))
        assert q.tolist() == q_gold and r.tolist() == r_gold


def test_featurizer_hashes_columns_to_the_golden_values():
    """The whole path a column takes (null policy, float casting, per-field seed) lands on the same rows."""
    schema = FeatureSchema(
        sparse=(
            SparseField("member_id", id_kind="integer"),
            SparseField("item_id", id_kind="integer"),
            SparseField("tag", id_kind="string"),
        ),
        dense=(),
        tasks=("click",),
    )
    f = Featurizer(schema, with_labels=False, history=False)
    item = GOLDEN_INT[ITEM_SEED]
    # a null integer id hashes like -1; 2**62 + 3 keeps all 64 bits
    assert f.sparse_ids("item_id", pa.array([10, None, -1, 2**62 + 3], pa.int64())).tolist() == [
        item[3],
        item[2],
        item[2],
        item[6],
    ]
    assert f.sparse_ids("item_id", pa.array([10.0, None], pa.float64())).tolist() == [item[3], item[2]]
    assert f.sparse_ids("member_id", pa.array([10, None], pa.int64())).tolist() == [
        6725925071609860960,
        193642060214326931,
    ]
    # a null string id hashes like ""
    assert f.sparse_ids("tag", pa.array(["a", None, ""])).tolist() == [
        8571679757402055204,
        8154464100445763129,
        8154464100445763129,
    ]


# --- Thompson sampling from the Bayesian last layer --------------------------------------------


def _fitted(noise: float, n: int = 200, dim: int = 3) -> tuple[BayesianLastLayer, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    phi = torch.randn(n, dim, generator=g)
    y = phi @ torch.tensor([0.5, -1.0, 0.25]) + 0.1 + noise * torch.randn(n, generator=g)
    blr = BayesianLastLayer(dim, prior_precision=1.0, noise=noise)
    blr.update(phi, y)
    return blr, phi


def test_thompson_draws_follow_the_posterior_predictive():
    """Across S draws, each candidate's Thompson score has the posterior mean phi~^T mu and variance
    phi~^T Sigma phi~, and candidates of one request share the draw (covariance Phi~ Sigma Phi~^T).

    Fails if the draw is ignored (variance 0), if the noise is not scaled by the posterior (N(0, I)
    weights: variance |phi~|^2, hundreds of times too large here), if the Cholesky factor is applied the
    wrong way (A instead of A^-1), or if each candidate gets its own draw (off-diagonal covariance 0)."""
    blr, _ = _fitted(noise=0.5)
    # near, mid and far candidates: the far one (outside the training data) must spread most
    cand = torch.tensor([[0.0, 0.0, 0.0], [1.0, -0.5, 0.5], [6.0, 6.0, -6.0], [-1.0, 2.0, 0.0]])
    x = np.c_[cand.numpy().astype(np.float64), np.ones(len(cand))]
    mean = x @ blr.mean.numpy()
    cov = x @ blr.covariance.numpy() @ x.T
    assert np.allclose(blr.mean_scores(cand).numpy(), mean, atol=1e-5)

    S = 4000
    draws = np.stack(
        [blr.thompson_scores(cand, torch.Generator().manual_seed(s)).numpy() for s in range(S)]
    ).astype(np.float64)  # (S, 4)
    sd = np.sqrt(np.diag(cov))
    # sample mean: standard error sd / sqrt(S); 5 standard errors
    assert (np.abs(draws.mean(0) - mean) < 5 * sd / np.sqrt(S) + 1e-5).all(), (draws.mean(0), mean)
    # sample covariance: standard error sqrt((C_ii C_jj + C_ij^2) / S) per entry
    emp = np.cov(draws.T)
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / S)
    assert (np.abs(emp - cov) < 5 * se).all(), (emp, cov)
    # the posterior is tight near the data and loose far from it
    assert sd[2] > 5 * sd[0]
    assert np.corrcoef(draws[:, 0], draws[:, 1])[0, 1] > 0.4  # one shared draw per request (0.63)

    # draws differ across generators; the same seed gives the same draw
    assert len({tuple(d.round(6)) for d in draws[:50]}) == 50
    again = blr.thompson_scores(cand, torch.Generator().manual_seed(7)).numpy()
    assert np.array_equal(again, draws[7].astype(np.float32))


def test_thompson_draw_equals_the_mean_when_the_posterior_is_certain():
    """With a near-zero posterior covariance (many points, tiny label noise) the draw is the mean, and
    the mean has recovered the true weights: fails if the draw adds noise not scaled by Sigma."""
    blr, _ = _fitted(noise=1e-6, n=500)
    assert blr.covariance.diagonal().max() < 1e-13
    assert np.allclose(blr.mean.numpy(), [0.5, -1.0, 0.25, 0.1], atol=1e-5)
    cand = torch.tensor([[0.0, 0.0, 0.0], [3.0, -2.0, 1.0]])
    exact = blr.mean_scores(cand).numpy()
    for s in range(5):
        assert np.allclose(
            blr.thompson_scores(cand, torch.Generator().manual_seed(s)).numpy(), exact, atol=1e-5
        )
