"""A local Ray listens on loopback only; a resume refuses an experiment folder others could have planted pickles in."""
from __future__ import annotations

import json
import os
import pickle
import stat
import subprocess
import sys

import pytest

import sweeps
from conftest import ROOT, tiny_spec
from search_spaces import load_spec

pytest.importorskip("ray")

# Run in a process of its own: no other test's Ray is in the way, and its whole tree is Ray's.
LISTENING = """
import json, os, ray, psutil  # psutil: Ray's own copy when not installed (ray puts it on sys.path)
from sweeps import ray_engine
ray_engine.start_local_ray(1)

@ray.remote
class Worker:
    def pid(self):
        return os.getpid()

worker = Worker.remote()
ray.get(worker.pid.remote())  # a worker process with its gRPC server up
me = psutil.Process()
found = []
for process in [me, *me.children(recursive=True)]:
    try:
        found += [[process.name(), c.laddr.ip, c.laddr.port] for c in process.net_connections("tcp")
                  if c.status == psutil.CONN_LISTEN]
    except psutil.NoSuchProcess:
        pass
print(json.dumps(found))
ray.shutdown()
"""


def test_a_local_ray_listens_on_loopback_only():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", LISTENING], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    sockets = json.loads(done.stdout.strip().splitlines()[-1])
    names = {name for name, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets  # the servers were seen at all
    from sweeps.ray_engine import _loopback
    assert [s for s in sockets if not _loopback(s[1])] == []


# ---- resume: refuse what another user could have written -------------------

class Planted:
    """Unpickling it creates `path`: the code a planted pickle would run."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture
def planted(write_spec, tmp_path):
    """A sweep with a Ray experiment to resume whose tuner.pkl runs code: (spec, runs, marker)."""
    from sweeps import ray_engine, study as studies
    spec = load_spec(write_spec(tiny_spec(), "ray.yaml"), ["engine=ray"])
    runs = tmp_path / "runs"
    storage = runs / "ray"
    ray_engine._Ledger(storage / "tiny.sweep.json", studies.fingerprint(spec), "tiny").started("tiny", 2)
    folder = ray_engine.private_dir(storage / "tiny")
    marker = tmp_path / "planted-code-ran"
    (folder / "tuner.pkl").write_bytes(pickle.dumps(Planted(str(marker))))
    (folder / "tuner.pkl").chmod(0o600)
    return spec, runs, marker


def resume(spec, runs):
    url = sweeps.resolve(spec.name, None, runs, create=True)
    return sweeps.run(spec, url, quiet=True, run_dir=str(runs))


@pytest.mark.parametrize("where, mode", [("ray/tiny", 0o770), ("ray/tiny/tuner.pkl", 0o666), ("ray", 0o777)])
def test_a_writable_experiment_is_refused_before_ray_unpickles_it(planted, where, mode):
    spec, runs, marker = planted
    (runs / where).chmod(mode)
    with pytest.raises(sweeps.SweepError, match="can be written by other users") as info:
        resume(spec, runs)
    assert str(runs / where) in str(info.value) and "; fix: " in str(info.value)
    assert not marker.exists()


def test_an_experiment_owned_by_another_user_is_refused(planted):
    if os.getuid() != 0:
        pytest.skip("needs root to give a folder to another uid")
    spec, runs, marker = planted
    os.chown(runs / "ray" / "tiny", 65534, 65534)
    with pytest.raises(sweeps.SweepError, match="is owned by uid 65534") as info:
        resume(spec, runs)
    assert str(runs / "ray" / "tiny") in str(info.value) and "chown" in str(info.value)
    assert not marker.exists()


def test_a_fresh_sweep_keeps_its_ray_files_private_even_under_a_lax_umask(write_spec, tmp_path):
    from sweeps import ray_engine
    spec = load_spec(write_spec(tiny_spec(budget={"trials": 1}), "ray.yaml"), ["engine=ray"])
    runs = tmp_path / "runs"
    runs.mkdir()
    old = os.umask(0o002)  # a user-private-group default: files group-writable unless the engine says otherwise
    try:
        summary = resume(spec, runs)
    finally:
        os.umask(old)
    assert summary.finished == 1
    storage = runs / "ray"
    assert stat.S_IMODE(storage.stat().st_mode) == 0o700
    assert stat.S_IMODE((storage / "tiny").stat().st_mode) == 0o700
    assert stat.S_IMODE((storage / "tiny.sweep.json").stat().st_mode) == 0o600
    assert json.loads((storage / "tiny.sweep.json").read_text())["current"] == "tiny"
    ray_engine.check_private(storage, storage / "tiny")  # the user's own experiment resumes
