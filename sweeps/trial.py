"""One sampled config run over its seeds, the same for every engine.

The seeds of a config advance side by side, an epoch at a time, so that an
engine's pruner sees their median (a config's seeds are one unit) and every
epoch ends with a checkpoint per seed from which a killed trial resumes.
"""
from __future__ import annotations

import shutil
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from search_spaces import SweepSpec
from trainable import TrialError
from trainable.config import with_key
from trainable.errors import OutOfMemory, release_device_memory
from trainable.run import Training, cpu_threads, out_of_memory_fails_the_trial, resolve_device

from . import gpus, record

EpochHook = Callable[[int, Sequence[Mapping[str, float]]], None]
"""(epoch, each seed's metrics); may raise the engine's prune exception."""


def versions() -> dict[str, str]:
    def v(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "unknown"
    return {"recipe_sweep": v("recipe-sweep"), "torch": torch.__version__, "optuna": v("optuna")}


def median_metrics(per_seed: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Each metric's median over the seeds (what a pruner compares)."""
    return {k: statistics.median(m[k] for m in per_seed) for k in per_seed[0]}


def run_seeds(spec: SweepSpec, values: Mapping[str, Any], on_epoch: EpochHook,
              on_run: Callable[[list[dict]], None], pruned: tuple[type[BaseException], ...] = (),
              checkpoint_dir: str | Path | None = None, save_first: bool = False, adopt: bool = False,
              device: str | None = None) -> float:
    """Train `values` once per seed, side by side; the objective is the median over seeds.

    `on_run(runs)` gets one row per seed when the trial ends (complete, pruned,
    or failed with a reason). `pruned` names the exceptions by which the
    engine's on_epoch stops a trial. With `checkpoint_dir`, each seed resumes
    from its checkpoint there and the folder is removed once the trial ends;
    `save_first` writes the epoch's checkpoints before on_epoch (Ray attaches
    them to its report), else after it (the Optuna engine records first).
    A checkpoint there of another config is left alone (Training.load) unless
    `adopt`: Ray hands a trial only its own or, under PBT, its donor's.
    `device` replaces train.device auto (Ray: a trial given no GPU trains on the CPU).
    A trial that shares its GPU (0 < resources.gpu < 1) takes its share of the GPU's
    memory, and one that runs out of it is run again, once, with the GPU to itself.
    isolated.run runs it here or in a fresh process.
    """
    configs = [spec.config(dict(values), i) for i in range(spec.seeds)]
    if device is not None and configs[0].train.device == "auto":
        configs = [with_key(cfg, "train.device", device) for cfg in configs]
    args = (configs, spec.objective.metric, on_epoch, on_run, pruned, checkpoint_dir, save_first, adopt)
    where = resolve_device(configs[0].train.device)
    gpu = gpus.shared_gpu(spec.resources.gpu, where)
    if gpu is None:
        return _run(*args)
    with gpus.turn(gpu, alone=False):
        gpus.cap_memory(spec.resources.gpu, where)
        try:
            return _run(*args)
        except OutOfMemory as e:
            reason = str(e)
    print(f"warning: a trial ran out of memory beside others on GPU {gpu} ({reason}); "
          "running it again with the GPU to itself", file=sys.stderr, flush=True)
    with gpus.turn(gpu, alone=True):
        gpus.cap_memory(1.0, where)
        try:
            return _run(*args)
        finally:
            gpus.cap_memory(spec.resources.gpu, where)


def _run(configs, metric: str, on_epoch: EpochHook, on_run: Callable[[list[dict]], None],
         pruned: tuple[type[BaseException], ...], checkpoint_dir, save_first: bool, adopt: bool) -> float:
    paths = [Path(checkpoint_dir) / f"seed{i}.pt" for i in range(len(configs))] if checkpoint_dir else None
    runs: list[Training] = []
    with cpu_threads(configs[0].train.threads):
        try:
            with out_of_memory_fails_the_trial():
                results = _advance(configs, runs, paths, on_epoch, save_first, adopt)
        except BaseException as e:
            if isinstance(e, pruned) or isinstance(e, TrialError):
                state = record.PRUNED if isinstance(e, pruned) else record.FAILED
                error = str(e) if isinstance(e, TrialError) else None
                on_run([record.partial_row(cfg.train.seed, runs[i].history if i < len(runs) else [], state, error)
                        for i, cfg in enumerate(configs)])
                if not (error or "").startswith(record.DISK_FULL):  # kept: the retry resumes from them
                    _clean(checkpoint_dir)
            if isinstance(e, OutOfMemory):  # the runs hold the models: drop them before the cache is emptied
                runs.clear()
                release_device_memory()
            raise
    on_run([record.complete_row(cfg.train.seed, res) for cfg, res in zip(configs, results)])
    _clean(checkpoint_dir)
    return statistics.median(res[metric] for res in results)


def _advance(configs, runs: list[Training], paths, on_epoch: EpochHook, save_first: bool,
             adopt: bool) -> list[dict]:
    """Build (or resume) every seed's run, then step them an epoch at a time to the end."""
    for i, cfg in enumerate(configs):
        runs.append(Training(cfg))
        if paths and paths[i].exists():
            runs[i].load(paths[i], any_config=adopt)
    while not all(r.done for r in runs):
        epoch = max(r.epochs_done for r in runs) + 1
        for r in runs:
            if r.epochs_done < epoch and not r.done:
                r.epoch()
        if save_first:
            _save(runs, paths)
        on_epoch(epoch, [r.history[-1] for r in runs])
        if not save_first:  # recorded before saved: a kill in between repeats the epoch, never loses it
            _save(runs, paths)
    return [r.finish() for r in runs]


def _save(runs: list[Training], paths) -> None:
    for r, path in zip(runs, paths or ()):
        r.save(path)


def _clean(checkpoint_dir) -> None:
    if checkpoint_dir:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
