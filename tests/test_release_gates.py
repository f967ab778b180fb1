"""The main job's release gates on recorded model evaluations, without Ray or Redis: which gate fails, the
message (gate, recorded value, threshold, flag, fix), --force, and the flat meta of a published version."""

from __future__ import annotations

import pytest

from jobs.best_of_n import (
    BestOfNFields,
    ReleaseGateError,
    check_release_gates,
    gate_meta,
    gates_line,
    release_gates,
)


def _cfg(**kw):
    return BestOfNFields(catalog="c", novelty="n", alignment="a", **kw)


def _novelty(validity=0.93, recall=0.66, base=0.65, **more):
    return {"evaluation": {"validity_free": {"t=1": validity, "t=1.5": 0.5}, "recall_at_n": recall,
                           "recall_frequency_baseline": base, **more}}  # fmt: skip


def _alignment(auc=0.77, base=0.74):
    return {"evaluation": {"model": {"auc": auc}, "global_positive_rate": {"auc": base}}}


def test_models_that_meet_the_issue_targets_pass_the_default_gates():
    gates = release_gates(_cfg(), "n", _novelty(), "a", _alignment())
    record = check_release_gates(gates, force=False)
    assert record["passed"] and not record["forced"] and record["failed"] == []
    assert record["gates"]["novelty_recall"] == {"value": 0.01, "threshold": 0.0, "passed": True}
    assert record["gates"]["alignment_auc"]["value"] == pytest.approx(0.03)
    # at the threshold exactly passes (recall equal to the baseline: "at or above")
    assert check_release_gates(release_gates(_cfg(), "n", _novelty(0.9, 0.65, 0.65), "a", _alignment(0.74)),
                               force=False)["passed"]  # fmt: skip
    assert gate_meta(record)["gates"] == "passed" and gates_line(record).startswith("release gates: passed")


@pytest.mark.parametrize(
    "novelty, alignment, cfg, failed, text",
    [
        (_novelty(validity=0.81), _alignment(), {}, ["novelty_validity"],
         "validity at t=1 is 0.8100, below the threshold 0.9000 (--min-novelty-validity; read from n/novelty.json)"),
        (_novelty(recall=0.42), _alignment(), {}, ["novelty_recall"],
         "minus the frequency baseline's is -0.2300, below the threshold 0.0000 (--novelty-recall-margin"),
        (_novelty(), _alignment(auc=0.7411, base=0.7428), {}, ["alignment_auc"],
         "global-positive-rate baseline's is -0.0017, below the threshold 0.0000 (--alignment-auc-margin; read from "
         "a/alignment.json). Fix: retrain the alignment model"),
        (_novelty(), _alignment(), {"alignment_auc_margin": 0.05}, ["alignment_auc"], "threshold 0.0500"),
        ({}, {}, {}, ["novelty_validity", "novelty_recall", "alignment_auc"], "is not recorded"),
        # recall recorded at another decoding than this run's measured other candidates: not recorded
        (_novelty(recall=0.81, base=0.77), _alignment(), {"decoding": "top"}, ["novelty_recall"],
         "at --decoding top (its evaluation used decoding sample) is not recorded"),
        (_novelty(recall=0.81, base=0.77, decoding="top"), _alignment(), {}, ["novelty_recall"],
         "at --decoding sample (its evaluation used decoding top) is not recorded"),
    ],
)  # fmt: skip
def test_each_gate_refuses_with_its_value_threshold_and_fix(novelty, alignment, cfg, failed, text):
    gates = release_gates(_cfg(**cfg), "n", novelty, "a", alignment)
    with pytest.raises(ReleaseGateError) as err:
        check_release_gates(gates, force=False)
    msg = str(err.value)
    assert text in msg and "--force" in msg
    assert [name for name in ("novelty_validity", "novelty_recall", "alignment_auc")
            if f"release gate {name}:" in msg] == failed  # fmt: skip
    record = check_release_gates(gates, force=True)  # --force publishes and says so
    assert record["forced"] and record["failed"] == failed
    meta = gate_meta(record)
    assert meta["gates"] == "forced" and meta["gates_failed"] == ",".join(failed)
    assert all(isinstance(v, (str, int, float)) for v in meta.values())  # Redis hash values
    assert "FAILED" in gates_line(record) and "--force" in gates_line(record)


def test_thresholds_are_checked_at_the_boundary():
    with pytest.raises(ValueError, match="min_novelty_validity"):
        _cfg(min_novelty_validity=1.5)
    assert _cfg(novelty_recall_margin=-0.02).novelty_recall_margin == -0.02


def test_the_recall_gate_reads_an_evaluation_of_the_runs_decoding():
    gates = release_gates(_cfg(decoding="top"), "n", _novelty(recall=0.81, base=0.77, decoding="top"), "a",
                          _alignment())  # fmt: skip
    assert check_release_gates(gates, force=False)["gates"]["novelty_recall"]["value"] == pytest.approx(0.04)
