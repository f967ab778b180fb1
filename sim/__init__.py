"""Member simulator: the stand-in for real members and their feedback logs.

Exploration can only be judged by how members respond to clusters they were never shown, and no
offline log holds that. The simulator is fitted on *all* MovieLens-100K ratings, including each
member's held-out last ratings (catalog.build holds them out of the catalog), and answers impressions
with clicks, likes, shares, skips and dwell times, written in the catalog's FEEDBACK_LOG schema.

Honesty: the models downstream (explore/, alignment/, ranking/) see only the logs written for items
they chose to show, never the simulator's parameters or the held-out ratings. They must not import
sim/ (tests/test_sim.py checks their imports).
"""

from sim.affinity import AffinityConfig, AffinityModel, fit_affinity
from sim.policies import (
    MostFrequentNextCluster,
    OracleNovelCluster,
    RandomNovelCluster,
    RankedListPolicy,
    build_impressions,
)
from sim.response import ResponseConfig, respond
from sim.simulator import IMPRESSION_COLUMNS, MemberSimulator, SimConfig

__all__ = [
    "AffinityConfig",
    "AffinityModel",
    "fit_affinity",
    "MostFrequentNextCluster",
    "OracleNovelCluster",
    "RandomNovelCluster",
    "RankedListPolicy",
    "build_impressions",
    "ResponseConfig",
    "respond",
    "IMPRESSION_COLUMNS",
    "MemberSimulator",
    "SimConfig",
]
