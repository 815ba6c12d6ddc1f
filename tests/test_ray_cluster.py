"""A sweep on a two-node Ray cluster (a head and a second node, both started with `ray start`),
driven through `sweep run --address`."""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys

import optuna
import pytest

from conftest import ROOT, tiny_spec

pytest.importorskip("ray")
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(tmp_path):
    ray = shutil.which("ray")
    if ray is None:
        pytest.skip("the `ray` command is not on PATH (pip install 'ray[tune]')")
    address = f"127.0.0.1:{free_port()}"
    # Ray's clusters authenticate with a token: one for the head, the node and the sweep's driver.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    common = ["--num-cpus=1", "--disable-usage-stats"]
    try:
        subprocess.run([ray, "start", "--head", f"--port={address.split(':')[1]}", "--node-ip-address=127.0.0.1",
                        "--include-dashboard=false", *common], check=True, env=env, capture_output=True, timeout=120)
        subprocess.run([ray, "start", f"--address={address}", "--node-ip-address=127.0.0.1", *common],
                       check=True, env=env, capture_output=True, timeout=120)
        yield address, env
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_a_sweep_runs_on_a_two_node_cluster_through_address(cluster, write_spec, tmp_path):
    spec = tiny_spec("cluster", sampler={"name": "grid"}, space={"optim.lr": {"grid": [0.02, 0.05, 0.1, 0.2]}})
    del spec["budget"]
    spec["base"]["train"]["epochs"] = 3
    path = write_spec(spec)
    runs = tmp_path / "runs"
    address, env = cluster
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "run", str(path), "--engine", "ray", "--address",
                           address, "--workers", "2", "--dir", str(runs), "--quiet"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = optuna.load_study(study_name="cluster", storage=f"sqlite:///{runs}/cluster.db").trials
    assert sorted(t.params["optim.lr"] for t in trials) == [0.02, 0.05, 0.1, 0.2]
    assert all(t.state.name == "COMPLETE" for t in trials)
    # Two trials at a time, one CPU each, one CPU per node: both nodes ran trials.
    nodes = {t.user_attrs["worker"].split(" node ")[1] for t in trials}
    assert len(nodes) == 2, [t.user_attrs["worker"] for t in trials]
