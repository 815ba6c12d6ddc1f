"""Guards of the GPU path that run without a GPU: device-independent resumes, no host round
trip per step, no tensor made on the default device, device assignment, error classes,
and per-step work that does not grow with the number of parameters."""
from __future__ import annotations

import collections
import gc
import threading
import time
import weakref

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import TINY_BASE
from option_sets import OPTION_SETS
from trainable import TrialError, from_flat, metrics, rules
from trainable.config import flatten
from trainable.errors import DeviceFailure, OutOfMemory, device_failure, out_of_memory
from trainable.optim import AdaBound, LAMB, LARS
from trainable.run import Training, update_ema


def tiny(**changes):
    return from_flat({**flatten(TINY_BASE), **changes})


@pytest.fixture
def cpu_fp16(monkeypatch):
    """fp16 with an enabled GradScaler on the CPU, which the rules keep for CUDA: the same code path."""
    monkeypatch.delitem(rules.CROSS, "fp16_needs_cuda")


# ---- resume independent of the device ------------------------------------

def test_a_checkpoint_resumes_whatever_the_trials_device_and_continues_the_same_run(tmp_path):
    cfg = tiny(**{"train.epochs": 2, "model.drop_path": 0.2})
    whole = Training(cfg)
    whole.epoch()
    whole.epoch()
    first = Training(cfg)
    first.epoch()
    first.save(tmp_path / "c.pt")
    resumed = Training(cfg)
    resumed.device = torch.device("meta")  # nothing may be loaded onto the trial's device by torch.load
    assert resumed.load(tmp_path / "c.pt")
    resumed.device = torch.device("cpu")
    assert resumed.epoch()["val_loss"] == whole.history[-1]["val_loss"]


@pytest.mark.parametrize("recorded", [True, False])
def test_a_cuda_random_state_resumed_on_a_cpu_run_fails_the_trial(tmp_path, recorded):
    run = Training(tiny())
    run.epoch()
    state = {**run.state_dict(), "config": run._identity()}
    state["gen"] = torch.zeros(16, dtype=torch.uint8)  # what a CUDA generator's get_state gives
    if recorded:
        state["gen_device"] = "cuda"
    else:
        del state["gen_device"]
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(TrialError, match="random state cannot move between kinds of device"):
        Training(tiny()).load(tmp_path / "c.pt")


# ---- no host round trip per step ------------------------------------------

class HostReads(TorchDispatchMode):
    """Counts reads of tensor values back to Python (each a device sync on a GPU)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def constructions(monkeypatch) -> collections.Counter:
    """Count tensors built from host data (torch.tensor, from_numpy, as_tensor) while the patch lasts."""
    counts: collections.Counter = collections.Counter()
    for name in ("tensor", "from_numpy", "as_tensor"):
        def counted(*args, _name=name, _orig=getattr(torch, name), **kwargs):
            if threading.current_thread() is threading.main_thread():
                counts[_name] += 1
            return _orig(*args, **kwargs)
        monkeypatch.setattr(torch, name, counted)
    return counts


@pytest.mark.parametrize("changes", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_an_epoch_reads_back_and_builds_from_host_data_a_fixed_number_of_times(monkeypatch, cpu_fp16, changes):
    """On CPU as the GPU path runs (no per-step divergence check): the counts must not grow with steps."""
    counts = []
    for subset in (64, 128):  # 2 and 4 steps of 32
        run = Training(tiny(**{**changes, "data.subset": subset, "data.eval_subset": 32, "train.batch_size": 32,
                               "train.epochs": 2}))
        run.check_each_step = False
        run.epoch()  # the first epoch makes the optimizer's state and copies the model into the EMA
        with monkeypatch.context() as m, HostReads() as reads:
            built = constructions(m)
            run.epoch()
        counts.append((reads.count, sum(built.values())))
    assert counts[0] == counts[1], counts


@pytest.mark.parametrize("changes", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_an_epoch_makes_no_tensor_on_the_default_device(cpu_fp16, changes):
    """Every tensor the loop makes names its device: with `meta` as the default, one that did not would fail."""
    run = Training(tiny(**{**changes, "data.subset": 64, "data.eval_subset": 32, "train.batch_size": 32,
                           "train.epochs": 2}))
    run.epoch()
    with torch.device("meta"):
        metrics = run.epoch()
    assert np.isfinite(metrics["train_loss"])


# ---- wrong results ----------------------------------------------------------

def test_a_seed_trained_beside_another_gets_the_result_it_gets_alone():
    """Shake-shake and drop path draw from the global RNG: each run keeps its own."""
    cfg = {"model.name": "shake_shake", "model.depth": 8, "model.base_channels": 4, "train.epochs": 2}
    alone = Training(tiny(**cfg))
    for _ in range(2):
        alone.epoch()
    side = [Training(tiny(**{**cfg, "train.seed": s})) for s in (0, 1)]
    for _ in range(2):
        for run in side:
            run.epoch()
    untimed = [[{k: v for k, v in h.items() if k not in metrics.TIMED} for h in run.history]
               for run in (alone, side[0], side[1])]
    assert untimed[0] == untimed[1] != untimed[2]


def test_an_fp16_run_whose_every_step_is_skipped_fails_with_the_reason(cpu_fp16):
    run = Training(tiny(**{"train.precision": "fp16", "data.subset": 256}))
    for p in run.model.parameters():  # finite loss, NaN gradients: the scaler skips every step
        p.register_hook(lambda g: g * float("nan"))
    with pytest.raises(TrialError, match="fp16 loss scale collapsed in epoch 1: every one of its 4 steps"):
        run.epoch()


def test_bf16_on_a_gpu_without_native_bf16_is_refused_with_the_fix():
    with pytest.raises(rules.ConfigError, match="train.precision: this GPU has no native bf16.*fix: use fp16"):
        rules.check(tiny(**{"train.precision": "bf16", "train.device": "cuda"}),
                    rules.Context(device="cuda", native_bf16=False))
    rules.check(tiny(**{"train.precision": "bf16", "train.device": "cuda"}), rules.Context(device="cuda"))


def test_the_first_step_is_timed_apart_from_the_steady_images_per_second():
    run = Training(tiny(**{"train.epochs": 2, "data.subset": 256}))
    first, second = run.epoch(), run.epoch()
    assert first["warmup_s"] > 0 and second["warmup_s"] == 0.0
    assert first["images_per_s"] > 0


# ---- errors -------------------------------------------------------------------

@pytest.mark.parametrize("error, kind", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), OutOfMemory),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), OutOfMemory),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"), OutOfMemory),
    (RuntimeError("CUDA error: invalid device ordinal\nCUDA kernel errors might be asynchronously reported"),
     DeviceFailure),
    (RuntimeError("CUDA error: device-side assert triggered"), DeviceFailure),
    (RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"), DeviceFailure),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), None),
    (ValueError("CUDA error: but not a runtime error"), None),
])
def test_cuda_failures_are_classified_as_trial_errors_and_other_errors_stay_bugs(error, kind):
    found = device_failure(error)
    assert (found is None) if kind is None else type(found) is kind
    assert (out_of_memory(error) is not None) == (kind is OutOfMemory)
    if found is not None:
        assert "\n" not in str(found)


def test_a_cuda_failure_in_an_isolated_trial_process_fails_the_trial_with_its_text(monkeypatch):
    import multiprocessing as mp

    from search_spaces import SweepSpec
    from sweeps import isolated

    def failing(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered\nCompile with TORCH_USE_CUDA_DSA")
    monkeypatch.setattr(isolated, "run_seeds", failing)
    parent, child = mp.Pipe()
    isolated._child(child, SweepSpec(name="x", source="test"), {}, None, False, False, torch.get_num_threads())
    assert parent.recv() == ("failed", "CUDA failure: CUDA error: device-side assert triggered", False)


def test_after_out_of_memory_the_model_can_be_collected(monkeypatch):
    from search_spaces import SweepSpec
    from sweeps.trial import run_seeds
    from trainable import objective

    models = []
    real = objective.Objective.__call__

    def oom_on_the_second_step(self, model, x, y, calls=[0]):
        calls[0] += 1
        if calls[0] == 1:
            models.append(weakref.ref(model))
            return real(self, model, x, y)
        big = torch.ones(8)  # a local of a frame the traceback holds
        raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {big.numel()} GiB")
    monkeypatch.setattr(objective.Objective, "__call__", oom_on_the_second_step)
    spec = SweepSpec(name="oom", source="test", base=tiny(**{"data.subset": 256}))
    rows = []
    with pytest.raises(OutOfMemory) as info:
        run_seeds(spec, {}, lambda *a: None, rows.extend)
    assert info.value is not None and rows[0]["state"] == "failed"
    assert models and models[0]() is None  # freed without the test collecting anything


# ---- device assignment ------------------------------------------------------

@pytest.fixture
def four_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.mark.parametrize("share, workers", [(1.0, 4), (0.5, 8), (0.25, 16), (0.0, 4)])
def test_workers_spread_over_the_gpus_with_their_shares(four_gpus, write_spec, share, workers):
    from conftest import tiny_spec
    from search_spaces import load_spec
    from sweeps.workers import _gpu_plan, auto_workers
    spec = load_spec(write_spec(tiny_spec(budget={"trials": 100}, resources={"gpu": share})))
    assert auto_workers(spec) == workers
    plan = _gpu_plan(workers)
    assert plan[:4] == ["0", "1", "2", "3"]  # the first four have a GPU each
    assert collections.Counter(plan) == {g: workers // 4 for g in "0123"}


def test_the_gpus_named_by_cuda_visible_devices_are_the_ones_spread(monkeypatch, four_gpus):
    from sweeps import gpus
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7,GPU-ab12,3")
    assert gpus.spread(6, gpus.visible()) == ["5", "7", "GPU-ab12", "3", "5", "7"]


@pytest.mark.slow
def test_each_worker_process_sees_only_its_gpu(four_gpus, write_spec, tmp_path):
    """Real workers of a real sweep (training on the CPU here): each records the GPU it was pinned to."""
    import optuna

    import sweeps
    from conftest import tiny_spec
    from search_spaces import load_spec
    spec = load_spec(write_spec(tiny_spec(budget={"trials": 4},
                                          space={"optim.lr": {"grid": [0.01, 0.02, 0.03, 0.04]}})))
    url = f"sqlite:///{tmp_path / 's.db'}"
    sweeps.run(spec, url, quiet=True, workers=2, run_dir=str(tmp_path / "runs"))
    trials = optuna.load_study(study_name=spec.name, storage=url).get_trials()
    by_worker = dict(t.user_attrs["worker"].split(" gpu ") for t in trials)  # host:pid -> its GPU
    assert len(trials) == 4 and by_worker
    assert set(by_worker.values()) <= {"0", "1"} and len(set(by_worker.values())) == len(by_worker)


def test_a_trial_given_no_gpu_trains_on_the_cpu_where_cuda_is_visible(four_gpus):
    from search_spaces import SweepSpec
    from sweeps.trial import run_seeds
    spec = SweepSpec(name="cpu", source="test", base=tiny())
    rows = []
    run_seeds(spec, {}, lambda *a: None, rows.extend, device="cpu")  # on CUDA, auto would fail here
    assert rows[0]["state"] == "complete"
    with pytest.raises((RuntimeError, AssertionError, TrialError)):
        run_seeds(spec, {}, lambda *a: None, rows.extend)


def test_ray_refuses_a_cuda_device_for_trials_it_gives_no_gpu(write_spec):
    from conftest import tiny_spec
    from search_spaces import load_spec
    from sweeps import SweepError, check
    from search_spaces.errors import SpecError
    raw = tiny_spec(engine="ray")
    raw["base"]["train"]["device"] = "cuda"
    with pytest.raises((SpecError, SweepError), match="resources.gpu.*0 gives Ray's trials no GPU"):
        check(load_spec(write_spec(raw), context=rules.Context(device="cuda")))
    raw["resources"] = {"gpu": 1}
    check(load_spec(write_spec(raw), context=rules.Context(device="cuda")))


# ---- sharing a GPU ------------------------------------------------------------

def test_a_trial_that_wants_the_gpu_alone_waits_for_the_running_ones_and_stops_new_ones(monkeypatch, tmp_path):
    from sweeps import gpus
    monkeypatch.setattr(gpus.tempfile, "gettempdir", lambda: str(tmp_path))
    events = []
    sharer_in, alone_waiting = threading.Event(), threading.Event()

    def sharer(name, hold):
        with gpus.turn("7", alone=False):
            events.append(f"{name} in")
            sharer_in.set()
            time.sleep(hold)
            events.append(f"{name} out")

    def alone():
        sharer_in.wait()
        alone_waiting.set()
        with gpus.turn("7", alone=True):
            events.append("alone in")
            time.sleep(0.2)
            events.append("alone out")

    first = threading.Thread(target=sharer, args=("a", 0.6))
    solo = threading.Thread(target=alone)
    first.start()
    solo.start()
    alone_waiting.wait()
    time.sleep(0.2)
    late = threading.Thread(target=sharer, args=("b", 0))  # arrives while the alone one waits
    late.start()
    for t in (first, solo, late):
        t.join(10)
    assert events == ["a in", "a out", "alone in", "alone out", "b in", "b out"]


def test_a_trial_out_of_memory_beside_others_is_run_again_alone_with_the_whole_gpu(monkeypatch, tmp_path):
    from search_spaces import SweepSpec
    from search_spaces.spec import Resources
    from sweeps import gpus, trial

    monkeypatch.setattr(gpus.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(gpus, "shared_gpu", lambda share, device: "3")
    caps = []
    monkeypatch.setattr(gpus, "cap_memory", lambda fraction, device: caps.append(fraction))
    real_epoch, calls = Training.epoch, []

    def epoch(self):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real_epoch(self)
    monkeypatch.setattr(Training, "epoch", epoch)
    spec = SweepSpec(name="packed", source="test", base=tiny(), resources=Resources(gpu=0.5))
    rows = []
    trial.run_seeds(spec, {}, lambda *a: None, rows.extend)
    assert caps == [0.5, 1.0, 0.5]
    assert [r["state"] for r in rows] == ["failed", "complete"]


# ---- work per step that does not grow with the parameters ---------------------

class OpCount(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _layers(n: int) -> nn.Module:
    return nn.Sequential(*[nn.Linear(4, 4) for _ in range(n)], nn.BatchNorm1d(4))


def _ops_per_step(make_opt, layers: int, scaler: bool = False) -> int:
    torch.manual_seed(0)
    model = _layers(layers)
    opt = make_opt(model.parameters())
    grad_scaler = torch.amp.GradScaler("cpu", enabled=scaler)
    for step in range(3):
        grad_scaler.scale(model(torch.randn(8, 4)).square().mean()).backward()
        grad_scaler.unscale_(opt)
        if step == 2:
            with OpCount() as ops:
                grad_scaler.step(opt)
        else:
            grad_scaler.step(opt)
        grad_scaler.update()
        opt.zero_grad()
    return ops.count


@pytest.mark.parametrize("make_opt", [
    lambda p: LARS(p, lr=0.1, weight_decay=1e-4), lambda p: LAMB(p, lr=1e-3, weight_decay=0.01),
    lambda p: AdaBound(p, lr=1e-3, weight_decay=1e-4)], ids=["lars", "lamb", "adabound"])
def test_a_hand_written_optimizer_step_issues_as_many_ops_for_4_or_16_tensors(make_opt):
    assert _ops_per_step(make_opt, 1) == _ops_per_step(make_opt, 7)


def test_an_ema_update_issues_as_many_ops_for_a_small_or_a_large_model():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    def ops(layers):
        model = _layers(layers)
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
        update_ema(ema, model, first=True)
        with OpCount() as count:
            update_ema(ema, model, first=False)
        return count.count
    assert ops(1) == ops(7)


@pytest.mark.parametrize("cls, kwargs", [(LARS, {"lr": 0.1, "weight_decay": 1e-4}),
                                         (LAMB, {"lr": 1e-2, "weight_decay": 0.01}),
                                         (AdaBound, {"lr": 1e-2, "weight_decay": 1e-4})])
def test_a_step_the_scaler_finds_inf_in_changes_nothing_and_the_next_one_trains(cls, kwargs):
    torch.manual_seed(0)
    model = _layers(2)
    opt = cls(model.parameters(), **kwargs)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    model(torch.randn(8, 4)).square().mean().backward()
    opt.step()  # a first plain step, so there is state to keep
    opt.zero_grad()
    before = {k: v.clone() for k, v in model.named_parameters()}  # (BatchNorm's statistics move in any case)
    states = [{k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for s in opt.state.values()]
    scaler.scale(model(torch.randn(8, 4)).square().mean() * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    after = dict(model.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in before)
    for old, new in zip(states, opt.state.values()):
        assert all(torch.equal(v, new[k]) for k, v in old.items() if torch.is_tensor(v))
    opt.zero_grad()
    scaler.scale(model(torch.randn(8, 4)).square().mean()).backward()
    scaler.step(opt)
    assert not any(torch.equal(before[k], v) for k, v in model.named_parameters())


def test_the_seeds_of_a_config_share_one_device_copy_of_the_data():
    runs = [Training(tiny(**{"train.seed": s})) for s in (0, 1)]
    assert runs[0].batches.x.data_ptr() == runs[1].batches.x.data_ptr()
    gc.collect()


def test_an_isolated_trial_process_keeps_its_workers_thread_count(monkeypatch):
    import multiprocessing as mp

    from search_spaces import SweepSpec
    from sweeps import isolated
    seen = []
    monkeypatch.setattr(isolated, "run_seeds", lambda *a, **k: seen.append(torch.get_num_threads()) or 0.5)
    before = torch.get_num_threads()
    try:
        parent, child = mp.Pipe()
        isolated._child(child, SweepSpec(name="x", source="test"), {}, None, False, False, 1)
        assert seen == [1] and parent.recv() == ("done", 0.5)
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_sweep_worker_starts_several_workers_that_finish_the_sweep_together(write_spec, tmp_path):
    import subprocess
    import sys

    import optuna

    from conftest import ROOT, tiny_spec
    spec = write_spec(tiny_spec(budget={"trials": 4}, space={"optim.lr": {"grid": [0.01, 0.02, 0.03, 0.04]}}))
    url = f"sqlite:///{tmp_path / 's.db'}"
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "worker", str(spec), "--storage", url,
                          "--dir", str(tmp_path / "runs"), "--workers", "2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("2 workers join sweep 'tiny'")
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    assert sorted(t.params["optim.lr"] for t in trials if t.state.name == "COMPLETE") == [0.01, 0.02, 0.03, 0.04]


def test_a_worker_of_two_rank_trials_gets_two_gpus_of_its_own(four_gpus, write_spec):
    from conftest import tiny_spec
    from search_spaces import load_spec
    from sweeps import gpus
    from sweeps.workers import _gpu_plan, auto_workers
    spec = tiny_spec(budget={"trials": 100}, resources={"gpu": 1})
    spec["base"]["train"]["devices"] = 2
    assert auto_workers(load_spec(write_spec(spec))) == 2
    assert _gpu_plan(2, 2) == ["0,1", "2,3"] and gpus.spread(3, ["0", "1", "2"], 2) == ["0,1", "0,1", "0,1"]
