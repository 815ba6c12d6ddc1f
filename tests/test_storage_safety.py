"""What a user sees when storage goes wrong: no password shown, one line instead of a traceback,
PostgreSQL URLs in the README's form, unreadable checkpoints and a full disk."""
from __future__ import annotations

import errno
import subprocess
import sys

import optuna
import pytest
import torch

import sweeps
from conftest import ROOT, TINY_BASE, tiny_spec
from postgres import postgres_server, postgres_url  # noqa: F401  (fixtures)
from search_spaces import load_spec
from sweeps.base import SweepError
from sweeps.optuna_work import open_study

CLI = [sys.executable, str(ROOT / "cli.py")]
SECRET = "s3cret"
UNREACHABLE = f"postgresql+psycopg2://user:{SECRET}@127.0.0.1:1/db"  # nothing listens on port 1


def cli(args, cwd, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """Exit 2 with a single stderr line "error: ...; fix: ..." (and no traceback); the line."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "fix:" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


# ---- 1. never print a password -------------------------------------------------

@pytest.mark.parametrize("command", ["run", "worker"])
@pytest.mark.parametrize("url", [UNREACHABLE, f"postgresql://user:{SECRET}@127.0.0.1:1/db"])
def test_run_and_worker_never_print_the_password(write_spec, tmp_path, command, url):
    path = write_spec(tiny_spec())
    done = cli([command, str(path), "--storage", url, "--dir", str(tmp_path / "runs")], tmp_path)
    line = one_line_error(done)
    assert SECRET not in done.stdout + done.stderr
    assert "user:***@127.0.0.1:1/db" in done.stdout and "user:***@127.0.0.1:1/db" in line  # shown, masked


@pytest.mark.parametrize("command", ["status", "table", "report", "dashboard"])
def test_reading_commands_never_print_the_password(tmp_path, command):
    done = cli([command, "tiny", "--storage", UNREACHABLE], tmp_path)
    line = one_line_error(done)
    assert SECRET not in done.stdout + done.stderr and "127.0.0.1:1" in line


# ---- 2. PostgreSQL URLs in the README's form ------------------------------------

def test_the_readme_form_postgresql_url_runs_a_sweep(write_spec, tmp_path, postgres_url):
    assert postgres_url.startswith("postgresql://")  # psycopg 3, SQLAlchemy 2's driver for it
    path = write_spec(tiny_spec(budget={"trials": 1}))
    done = cli(["run", str(path), "--storage", postgres_url, "--workers", "1", "--dir", str(tmp_path / "runs"),
                "--quiet"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "1/1 trials finished" in done.stdout
    # psycopg2's form reaches the same database
    legacy = postgres_url.replace("postgresql://", "postgresql+psycopg2://")
    assert [t.state.name for t in optuna.load_study(study_name="tiny", storage=legacy).trials] == ["COMPLETE"]


def test_the_cannot_open_fix_names_a_form_that_works(write_spec, tmp_path, postgres_server):
    done = cli(["run", str(write_spec(tiny_spec())), "--storage", UNREACHABLE], tmp_path)
    line = one_line_error(done)
    suggested = line.split("such as ")[1].split(" or ")[1]
    assert suggested == "postgresql://user:PASSWORD@host/db"
    working = (suggested.replace("user:PASSWORD", "postgres").replace("host", f"127.0.0.1:{postgres_server.port}")
               .replace("/db", "/postgres"))
    assert optuna.get_all_study_names(working) is not None  # the form opens the real server


# ---- 6. one line instead of a traceback ----------------------------------------

@pytest.mark.parametrize("command", [["status"], ["table"], ["report"], ["plot", "--kind", "history"],
                                     ["dashboard"], ["run"]])
def test_a_corrupt_database_is_one_line(write_spec, tmp_path, command):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "tiny.db").write_bytes(b"this is not an SQLite database\n" * 100)
    target = str(write_spec(tiny_spec())) if command == ["run"] else "tiny"
    line = one_line_error(cli([command[0], target, *command[1:], "--dir", str(runs)], tmp_path))
    assert "tiny.db" in line and "not a readable sweep database" in line


@pytest.mark.parametrize("command", [["status"], ["table"], ["report"], ["plot", "--kind", "history"],
                                     ["dashboard"]])
def test_an_unreachable_database_is_one_line(tmp_path, command):
    line = one_line_error(cli([command[0], "tiny", *command[1:], "--storage", UNREACHABLE], tmp_path))
    assert "server" in line


def test_dir_that_is_a_file_is_one_line(write_spec, tmp_path):
    (tmp_path / "afile").write_text("x")
    line = one_line_error(cli(["run", str(write_spec(tiny_spec())), "--dir", str(tmp_path / "afile")], tmp_path))
    assert "--dir" in line


def test_a_report_into_a_folder_that_cannot_be_made_is_one_line(write_spec, tmp_path):
    spec = load_spec(write_spec(tiny_spec(budget={"trials": 1})))
    url = sweeps.resolve(spec.name, None, tmp_path / "runs", create=True)
    sweeps.run(spec, url, quiet=True, workers=1, run_dir=str(tmp_path / "runs"))
    (tmp_path / "afile").write_text("x")  # a folder under a regular file cannot be made, even by root
    for command in (["report"], ["plot", "--kind", "history"]):
        out = str(tmp_path / "afile" / "sub" / "out.html")
        line = one_line_error(cli([command[0], "tiny", *command[1:], "--dir", str(tmp_path / "runs"),
                                   "--out", out], tmp_path))
        assert "afile" in line


def test_a_port_out_of_range_is_one_line(write_spec, tmp_path):
    spec = load_spec(write_spec(tiny_spec(budget={"trials": 1})))
    url = sweeps.resolve(spec.name, None, tmp_path / "runs", create=True)
    open_study(spec, url)
    line = one_line_error(cli(["dashboard", "tiny", "--dir", str(tmp_path / "runs"), "--port", "99999"], tmp_path))
    assert "99999" in line


# ---- 5. unreadable checkpoints, a full disk -------------------------------------

def _training():
    from trainable.config import from_flat
    from trainable.run import Training
    flat = {f"{group}.{k}": v for group, keys in TINY_BASE.items() for k, v in keys.items()}
    return Training(from_flat(flat))


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_an_unreadable_checkpoint_counts_as_absent_and_is_moved_aside(tmp_path, capsys, damage):
    run, path = _training(), tmp_path / "seed0.pt"
    if damage == "garbage":
        path.write_bytes(b"\x80\x04not a checkpoint" * 50)
    else:
        run.save(path)
        path.write_bytes(path.read_bytes()[:2000])
    assert run.load(path) is False
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("warning: checkpoint") and "unreadable" in err
    assert "weights_only" not in err
    assert not path.exists() and (tmp_path / "seed0.pt.unreadable").exists()


def test_a_sweep_over_a_garbage_checkpoint_starts_the_trial_over(write_spec, tmp_path):
    path = write_spec(tiny_spec(budget={"trials": 1}))
    runs = tmp_path / "runs"
    garbage = runs / "tiny" / "trial-0" / "seed0.pt"
    garbage.parent.mkdir(parents=True)
    garbage.write_bytes(b"PK\x03\x04 tampered" * 100)
    done = cli(["run", str(path), "--workers", "1", "--dir", str(runs), "--quiet"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "1/1 trials finished" in done.stdout and "unreadable" in done.stderr and "Traceback" not in done.stderr
    assert "weights_only" not in done.stdout + done.stderr
    [t] = optuna.load_study(study_name="tiny", storage=f"sqlite:///{runs / 'tiny.db'}").trials
    assert t.state.name == "COMPLETE" and "error" not in t.user_attrs


def test_a_full_disk_fails_the_trial_stops_the_sweep_and_the_rerun_resumes(write_spec, tmp_path, monkeypatch):
    spec_dict = tiny_spec(budget={"trials": 2})
    spec_dict["base"]["train"]["epochs"] = 3
    spec = load_spec(write_spec(spec_dict))
    runs = tmp_path / "runs"
    url = sweeps.resolve(spec.name, None, runs, create=True)
    real_save, saves = torch.save, []

    def save(obj, f, *args, **kwargs):  # the first epoch's checkpoint is written, the second finds the disk full
        saves.append(str(f))
        if len(saves) > 1:
            with open(f, "wb") as out:
                out.write(b"partial")  # as a real full disk leaves a part written
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(SweepError) as stop:
        sweeps.run(spec, url, quiet=True, workers=1, run_dir=str(runs))
    assert "disk full" in str(stop.value) and "fix:" in str(stop.value)
    study = optuna.load_study(study_name="tiny", storage=url)
    [t] = study.trials  # the sweep stopped: no second trial started on the full disk
    assert t.state.name == "FAIL" and t.user_attrs["error"].startswith("disk full: ")
    folder = runs / "tiny" / "trial-0"
    assert not list(folder.glob("*.tmp")) and (folder / "seed0.pt").exists()  # the last good checkpoint kept
    monkeypatch.setattr(torch, "save", real_save)  # space freed
    again = sweeps.run(spec, url, quiet=True, workers=1, run_dir=str(runs))
    assert again.finished == 2
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    retry = next(r for r in trials if r.user_attrs.get("retried") == t.number)
    assert retry.state.name == "COMPLETE" and retry.params == t.params
    assert [c["epoch"] for c in retry.user_attrs["curve.0"]] == [1, 2, 3]  # resumed from epoch 1's checkpoint
    assert retry.user_attrs["curve.0"][0] == t.user_attrs["curve.0"][0]


@pytest.mark.parametrize("argv,fragment", [
    (["status", "../../etc/x"], "is not a sweep name"),
    (["report", "a\nb"], "is not a sweep name"),
])
def test_a_name_that_would_leave_dir_is_refused(argv, fragment, tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), *argv, "--dir", str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and fragment in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert not list(tmp_path.parent.glob("*report.html"))


def test_status_of_a_spec_file_that_is_not_yaml_is_one_line(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: [\n")
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "status", str(spec)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "not valid YAML" in out.stderr and "Traceback" not in out.stderr, out.stderr
