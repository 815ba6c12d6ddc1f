"""benchmarks/chaos.py in small doses: kills, two runs at once, a database restart, a full disk."""
from __future__ import annotations

import os
import random

import pytest

from benchmarks import chaos
from postgres import postgres_server  # noqa: F401  (fixture)

ZERO = dict.fromkeys(chaos.COUNTS, 0)


def counts(result: dict) -> dict:
    return {k: result[k] for k in chaos.COUNTS}


@pytest.mark.slow
def test_two_kills_of_sweep_run_on_sqlite_lose_and_repeat_nothing(tmp_path):
    result = chaos.kill_runs(tmp_path, None, kills=2, rng=random.Random(1), tag="t")
    assert result["kills"] == 2 and result["orphans"] == 0 and result["failed_finals"] == 0, result
    assert counts(result) == ZERO, result


@pytest.mark.slow  # the default tests race two runs in test_workers.py
def test_two_runs_started_together_run_each_grid_point_once(tmp_path):
    result = chaos.races(tmp_path, None, 1, tag="t")
    assert result["failed_runs"] == 0 and counts(result) == ZERO, result


@pytest.mark.slow
def test_worker_kills_and_a_restart_on_postgres_and_a_full_disk(tmp_path, postgres_server):
    kills = chaos.kill_workers(tmp_path, postgres_server.createdb("kills"), kills=3, rng=random.Random(2), tag="t")
    assert kills["kills"] == 3 and kills["failed_finals"] == 0 and counts(kills) == ZERO, kills
    restart = chaos.restart_postgres(tmp_path, postgres_server)
    assert restart["returncode"] == 0 and restart["waited"] and counts(restart) == ZERO, restart
    if os.geteuid() != 0:
        pytest.skip("the full-disk part mounts a tmpfs: root only")
    full = chaos.fill_disk(tmp_path)
    assert full["returncode"] == 2 and full["disk_full"] and not full["traceback"], full
    assert full["integrity"] == "ok" and full["tmp_left"] == 0 and full["rerun_returncode"] == 0, full
    assert counts(full) == ZERO, full
