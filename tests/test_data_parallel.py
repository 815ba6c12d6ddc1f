"""Trials of several ranks (train.devices): real processes in a gloo process group on the CPU, each
training on its share of every batch, rank 0 speaking for the trial."""
from __future__ import annotations

import copy

import pytest
import torch
import yaml

import analysis
import sweeps
from conftest import TINY_BASE, tiny_spec
from search_spaces import load_spec
from search_spaces.load import parse_spec
from sweeps import isolated
from trainable import ConfigError, from_flat, train
from trainable.config import flatten
from trainable.model_io import load_model

# Augmentation off: the ranks then see exactly the images one process sees.
PLAIN = {"augment.crop_padding": 0, "augment.flip": False, "data.subset": 256, "data.eval_subset": 128,
         "train.epochs": 1, "train.batch_size": 64, "train.threads": 1, "optim.weight_decay": 5e-4}


def _spec(changes: dict, **top):
    spec = tiny_spec(**top)
    base = flatten(copy.deepcopy(TINY_BASE))
    base.update(changes)
    spec["base"] = base
    return spec


def _weights(path) -> dict[str, torch.Tensor]:
    model = load_model(str(path), torch.device("cpu"))
    return {k: v.float() for k, v in model.state_dict().items()}


def _two_ranks(tmp_path, changes: dict) -> dict[str, torch.Tensor]:
    out = tmp_path / "ranks.pt"
    spec = parse_spec(yaml.safe_dump(_spec({**PLAIN, **changes, "train.devices": 2, "train.save_model": str(out)})))
    isolated.run(spec, {"optim.lr": 0.05}, lambda epoch, per_seed: None, lambda rows: None)
    return _weights(out)


def _apart(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in b)


def test_two_ranks_with_sync_bn_end_with_the_weights_of_one_process_at_the_same_global_batch(tmp_path):
    one = tmp_path / "one.pt"
    train(from_flat({**flatten(copy.deepcopy(TINY_BASE)), **PLAIN, "optim.lr": 0.05, "train.save_model": str(one)}))
    reference = _weights(one)
    synced = _two_ranks(tmp_path, {"train.sync_bn": True})
    assert synced.keys() == reference.keys()
    # 4 steps: the convolutions' sums over batches of 32 and 64 round differently (measured up to 2e-3)
    assert _apart(synced, reference) < 5e-3
    # Without SyncBN each rank normalizes its own half: the weights part far more (measured 7e-2).
    local = _two_ranks(tmp_path, {})
    assert _apart(local, reference) > 10 * _apart(synced, reference)


def test_a_sweep_of_two_rank_trials_records_them_and_prunes_one_that_cannot_learn(write_spec, tmp_path):
    spec = _spec({"train.devices": 2, "train.epochs": 2, "data.subset": 1024, "train.threads": 1},
                 sampler={"name": "grid"}, budget={"trials": 2},
                 pruner={"name": "median", "startup_trials": 1, "warmup_epochs": 0},
                 space={"optim.lr": {"grid": [0.1, 1.0e-7]}})
    path = write_spec(spec)
    spec_obj = load_spec(path)
    url = sweeps.resolve(spec_obj.name, None, tmp_path / "runs", create=True)
    summary = sweeps.run(spec_obj, url, quiet=True)
    assert summary.finished == 2
    frame = analysis.load(spec_obj, url).set_index("optim.lr")
    assert frame.loc[0.1, "state"] == "complete" and 0 <= frame.loc[0.1, "test_error"] <= 1
    assert frame.loc[1.0e-7, "state"] == "pruned" and frame.loc[1.0e-7, "epochs_done"] == 1
    assert (frame["world_size"] == 2).all()


def test_one_process_cannot_train_a_trial_of_two_ranks_and_the_batch_must_split():
    with pytest.raises(ConfigError, match="train.devices"):
        train(from_flat({**flatten(copy.deepcopy(TINY_BASE)), **PLAIN, "train.devices": 2}))
    with pytest.raises(ConfigError, match="train.batch_size"):
        train(from_flat({**flatten(copy.deepcopy(TINY_BASE)), **PLAIN, "train.devices": 3}))


@pytest.mark.parametrize("engine, changes, key", [("ray", {"train.devices": 2}, "train.devices"),
                                                  ("optuna", {"train.nodes": 2}, "train.nodes")])
def test_what_an_engine_cannot_run_is_refused_before_the_sweep_starts(write_spec, tmp_path, engine, changes, key):
    import subprocess
    import sys

    from conftest import ROOT
    path = write_spec(_spec(changes, engine=engine))
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "run", str(path), "--dir", str(tmp_path / "runs")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and key in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def _marked(mark: str) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes whose environment holds `mark`."""
    import os
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if mark.encode() not in f.read():
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                found.append((int(entry), f.read().replace(b"\0", b" ").decode()))
            with open(f"/proc/{entry}/stat") as f:
                if f.read().split(") ")[1].split()[0] == "Z":  # a zombie: gone, not yet reaped
                    found.pop()
        except OSError:
            continue
    return sorted(found)


def _listening(mark: str) -> set[str]:
    """The local addresses of the TCP sockets the marked processes listen on (from /proc)."""
    import ipaddress
    import os
    inodes = set()
    for pid, _ in _marked(mark):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    raw = bytes.fromhex(fields[1].split(":")[0])
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # little-endian words
                    found.add(str(ipaddress.ip_address(words)))
    return found


@pytest.mark.slow
def test_a_rank_killed_fails_its_trial_leaves_nothing_running_and_nothing_listened_beyond_loopback(write_spec, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import uuid

    from conftest import ROOT, wait_for
    mark = f"RECIPE_SWEEP_TEST_MARK={uuid.uuid4().hex}"
    path = write_spec(_spec({**PLAIN, "train.devices": 2, "train.epochs": 200}, budget={"trials": 1}))
    env = {**os.environ, mark.split("=")[0]: mark.split("=")[1]}
    sweep = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "run", str(path), "--dir", str(tmp_path / "runs")],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ranks = wait_for(lambda: [p for p, cmd in _marked(mark.split("=")[1])
                                  if "spawn_main" in cmd and "resource_tracker" not in cmd][1:] or None, timeout=120)
        assert ranks, "the trial's ranks did not start"
        wait_for(lambda: False, timeout=3)  # into training
        listening = _listening(mark.split("=")[1])
        assert listening <= {"127.0.0.1", "::1"}, listening  # nothing beyond loopback
        os.kill(ranks[-1], signal.SIGKILL)
        out, err = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert wait_for(lambda: not _marked(mark.split("=")[1]), timeout=30), _marked(mark.split("=")[1])
    spec = load_spec(path)
    frame = analysis.load(spec, sweeps.resolve(spec.name, None, tmp_path / "runs"))
    assert frame.loc[0, "state"] == "failed", (out, err)
    assert frame.loc[0, "error"].startswith("rank 1 of the trial's 2 processes died (exit code -9)")


@pytest.mark.slow
def test_a_killed_sweep_leaves_no_rank_running_and_its_rerun_resumes_the_trial(write_spec, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import uuid

    from conftest import ROOT, wait_for
    mark = uuid.uuid4().hex
    path = write_spec(_spec({**PLAIN, "train.devices": 2, "train.epochs": 6}, budget={"trials": 1}))
    cmd = [sys.executable, str(ROOT / "cli.py"), "run", str(path), "--dir", str(tmp_path / "runs")]
    sweep = subprocess.Popen(cmd, env={**os.environ, "RECIPE_SWEEP_TEST_MARK": mark},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "runs"
    try:
        assert wait_for(lambda: list(checkpoints.rglob("seed0.pt")), timeout=120), "no checkpoint was written"
        os.kill(sweep.pid, signal.SIGKILL)
        sweep.wait(30)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert wait_for(lambda: not _marked(mark), timeout=30), _marked(mark)  # the ranks died with it
    saved = torch.load(next(checkpoints.rglob("seed0.pt")), map_location="cpu", weights_only=True)["history"]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    spec = load_spec(path)
    frame = analysis.load(spec, sweeps.resolve(spec.name, None, tmp_path / "runs"))
    assert list(frame["state"]) == ["complete"] and frame.loc[0, "epochs_done"] == 6
    curve = analysis.curves(spec, sweeps.resolve(spec.name, None, tmp_path / "runs"))
    assert sorted(set(curve[curve["metric"] == "val_error"]["epoch"])) == [1, 2, 3, 4, 5, 6]
    times = curve[curve["metric"] == "epoch_time_s"].sort_values("epoch")["value"].tolist()
    assert times[:len(saved)] == [h["epoch_time_s"] for h in saved]  # resumed: the killed run's epochs kept


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["image_folder", "image_shards"])
def test_two_ranks_train_on_streamed_images(tmp_path, dataset):
    from jpeg_folder import write_jpeg_folder
    from trainable.config import Data
    from trainable.export import write
    root = write_jpeg_folder(tmp_path / "folder", train=192, test=48, size=(40, 36))
    if dataset == "image_shards":
        root = write(tmp_path / "shards", Data(dataset="image_folder", root=str(root)), None, None, 0, shards=40)
    changes = {**PLAIN, "train.devices": 2, "data.dataset": dataset, "data.root": str(root), "data.storage": "stream",
               "data.image_size": 24, "data.workers": 1, "augment.random_resized_crop": True, "data.subset": None,
               "data.val_fraction": 0.25, "train.batch_size": 32}
    spec = parse_spec(yaml.safe_dump(_spec(changes)))
    epochs = []
    value = isolated.run(spec, {"optim.lr": 0.05}, lambda epoch, per_seed: epochs.append(per_seed[0]), lambda r: None)
    assert 0 <= value <= 1 and epochs[0]["world_size"] == 2 and epochs[0]["val_error"] == value


@pytest.mark.slow
def test_sweep_train_runs_a_trial_of_two_ranks_and_names_a_batch_that_does_not_split():
    import json
    import subprocess
    import sys

    from conftest import ROOT
    sets = ["--set", "data.subset=256", "--set", "model.depth=8", "--set", "model.base_channels=4", "--set",
            "train.epochs=2", "--set", "train.batch_size=64", "--set", "train.threads=1"]
    cmd = [sys.executable, str(ROOT / "cli.py"), "train", *sets, "--set", "train.devices=2", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line.get("epoch") for line in lines[:2]] == [1, 2] and lines[-1]["final"]
    assert lines[-1]["world_size"] == 2 and 0 <= lines[-1]["test_error"] <= 1
    bad = subprocess.run(cmd[:-3] + ["--set", "train.devices=3"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "train.batch_size" in bad.stderr and "Traceback" not in bad.stderr


def _bn(seed: int = 5):
    from trainable.sync_bn import CpuSyncBatchNorm
    torch.manual_seed(seed)
    bn = CpuSyncBatchNorm(8)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    return bn


def _bn_rank(rank: int, x: torch.Tensor, g: torch.Tensor, store: str, out: str) -> None:
    import os

    import torch.distributed as dist
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    bn, share = _bn(), x.chunk(2)[rank].clone().requires_grad_(True)
    y = bn(share)
    (y * g.chunk(2)[rank]).sum().backward()
    torch.save({"y": y.detach(), "gx": share.grad, "gw": bn.weight.grad, "gb": bn.bias.grad,
                "mean": bn.running_mean, "var": bn.running_var}, f"{out}{rank}.pt")
    dist.destroy_process_group()


def test_the_cpu_sync_batchnorm_of_two_ranks_is_batchnorm_over_their_whole_batch(tmp_path):
    import torch.multiprocessing as mp
    gen = torch.Generator().manual_seed(1)
    x, g = torch.randn(64, 8, 6, 6, generator=gen) * 2 + 3, torch.randn(64, 8, 6, 6, generator=gen)
    mp.spawn(_bn_rank, args=(x, g, str(tmp_path / "store"), str(tmp_path / "rank")), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    whole = _bn()
    whole.__class__ = torch.nn.BatchNorm2d  # the same module, normalizing the whole batch in one process
    xr = x.clone().requires_grad_(True)
    (whole(xr) * g).sum().backward()
    reference = torch.nn.functional.batch_norm(x, None, None, whole.weight.detach(), whole.bias.detach(), True)
    assert torch.allclose(torch.cat([r["y"] for r in ranks]), reference, atol=1e-5)
    assert torch.allclose(torch.cat([r["gx"] for r in ranks]), xr.grad, atol=1e-5)
    # Each rank's parameter gradient is its share's; DDP averages them, here summed as one process's.
    assert torch.allclose(ranks[0]["gw"] + ranks[1]["gw"], whole.weight.grad, rtol=1e-4, atol=1e-4)
    assert torch.allclose(ranks[0]["gb"] + ranks[1]["gb"], whole.bias.grad, rtol=1e-4, atol=1e-4)
    assert torch.allclose(ranks[0]["mean"], whole.running_mean, atol=1e-6)
    assert torch.allclose(ranks[0]["var"], whole.running_var, atol=1e-5)
