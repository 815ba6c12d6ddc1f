"""The Ray Tune engine: trials as Ray actors, results in the sweep's Optuna study.

Ray schedules the trials (`max_concurrent_trials` = --workers, resources per
trial from the spec, a cluster with --address) and stops poor ones early with
its schedulers (rungs in epochs); Ray's `OptunaSearch` samples them with the
same define-by-run `sample(spec, trial)` as the Optuna engine, so every
distribution, condition and alternative maps the same way. Each trial is
`sweeps.trial.run_seeds`, the training the Optuna engine runs, reporting every
epoch with a checkpoint of its seeds.

Every finished Ray trial is written once (keyed by its Ray trial id, user attr
"ray_trial_id") into the sweep's Optuna study with the attrs the Optuna engine
writes ("config", "versions", "runs", "curve.{i}", "error"), so `sweep
status/table`, `analysis.load/curves` and the Optuna dashboard read a Ray sweep
like any other. Only finished trials are written: a running Ray trial does not
show in the study.

Resume: Ray's experiment folder is `<--dir>/ray/<name>`, and
`<--dir>/ray/<name>.sweep.json` records which sweep it belongs to (its
fingerprint) and its trial budget. Running the same command again restores
it (`Tuner.restore(..., resume_unfinished=True)`): finished trials are kept,
unfinished ones resume from their last epoch's checkpoint (a killed driver
loses at most the epoch in flight), and trials already written are not
written again. A sweep whose budget grew after its experiment ran out gets a
further experiment (`<name>-2`, ...) for the missing trials; grid points
continue their cycle from the trials already in the study. A restored
experiment keeps the sampler, pruner and resources it started with. Restoring
unpickles the experiment's files, so a folder (or anything in it, or a folder
above it up to `<--dir>/ray`) that another user owns or can write is refused;
the engine makes its folders 0700 and its files 0600 (check_private).

A local Ray (no --address) listens on loopback only (start_local_ray); a
cluster keeps its own settings.

A fresh actor re-imports torch, Ray Tune and this package and reloads the data
set for every trial, which costs far more than a small trial itself
(BENCHMARKS.md, "Engine overhead"). Hence reuse_actors is on for CPU trials;
GPU trials get a fresh actor each, so no CUDA memory cache is carried from
trial to trial.

PBT (`pruner: {name: pbt}`, Ray only): see ray_pbt.py. HyperBand pauses
trials until its bracket fills, so a budget smaller than a bracket prunes
nothing. Ray's `time_budget_s` is not used: budget.minutes stops new trials
(as in the Optuna engine) and lets running ones finish. With a Ray Client
address (ray://...) Tune runs its loop on the cluster: trials are written
when the sweep ends, and an early-stopped trial's curve holds only the epochs
of its last report; `--address auto` on a cluster node writes them live.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import warnings
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

import ray
from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search_spaces import SweepSpec
from trainable import TrialError, to_dict
from trainable.config import with_key

from . import compat, isolated, ray_pbt, ray_schedulers, record, sampling, study as studies
from .base import RunOptions, RunSummary, SweepError
from .progress import Progress
from .trial import median_metrics, run_seeds, versions

REUSE_ACTORS: bool | None = None   # None: as resources.isolate says (tests and measurements override it)
PATH_KEYS = ("data.root", "train.teacher", "train.save_model")  # resolved against the driver's folder
GRID_CYCLES_UNBUDGETED = 100       # grid cycles queued when only budget.minutes bounds the sweep

# Keys of our reports (Ray fills in its own: training_iteration, time_total_s, trial_id, ...).
FINAL, ERROR, RUNS, CURVES, SEEDS, VERSIONS, WORKER, PARAMS = (
    "sweep_final", "sweep_error", "sweep_runs", "sweep_curves", "sweep_seeds", "sweep_versions", "sweep_worker",
    "sweep_params")


# ---- inside the trial (a Ray actor, in its own working directory) --------

def _absolute(spec: SweepSpec, cwd: str) -> SweepSpec:
    """The spec with relative paths of the base and variants made absolute against the driver's folder."""
    def fix(value):
        if isinstance(value, str) and value and not os.path.isabs(os.path.expanduser(value)):
            return os.path.join(cwd, value)
        return value

    base = spec.base
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(base, section), name)
        if fix(value) != value:
            base = with_key(base, key, fix(value))
    variants = {v: {k: fix(x) if k in PATH_KEYS else x for k, x in keys.items()}
                for v, keys in spec.variants.items()}
    return dataclasses.replace(spec, base=base, variants=variants)


def _values(spec: SweepSpec, params: dict[str, Any]) -> dict[str, Any]:
    """The spec's values (by key) of a trial's Optuna-named params."""
    return sampling.sample(spec, optuna.trial.FixedTrial(dict(params)))


def _worst(spec: SweepSpec) -> float:
    """A finite stand-in for a failed trial's metric (inf trips Ray's TensorBoard logger)."""
    return sys.float_info.max if spec.objective.mode == "min" else -sys.float_info.max


def train_trial(config: dict[str, Any], spec: SweepSpec, cwd: str) -> None:
    """Ray's function trainable: run_seeds with one report (and checkpoint) per epoch.

    The last report (FINAL) carries the objective, the runs and the curves; a
    trial the scheduler stops never gets there (Ray ends it inside a report).
    """
    for name in ("ray.train", "ray.tune"):  # "Checkpoint successfully created" every epoch
        logging.getLogger(name).setLevel(logging.WARNING)
    metric = spec.objective.metric
    try:
        values = _values(spec, config)
    except TrialError as e:  # a derive that cannot be computed: the trial fails with its reason
        tune.report({FINAL: 1, ERROR: str(e), metric: _worst(spec), record.EPOCH: 0,
                     VERSIONS: json.dumps(versions())})
        return
    for key in PATH_KEYS:  # a sampled path, made absolute like the base's
        if isinstance(values.get(key), str) and not os.path.isabs(os.path.expanduser(values[key])):
            values[key] = os.path.join(cwd, values[key])
    local = Path(tempfile.mkdtemp(prefix="sweep-ray-"))
    curves: list[list[dict]] = [[] for _ in range(spec.seeds)]
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # resumed (killed driver, paused trial): continue from the last epoch
        with checkpoint.as_directory() as folder:
            shutil.copytree(folder, local, dirs_exist_ok=True)
        if (local / "curves.json").exists():
            curves = json.loads((local / "curves.json").read_text())
    first = {VERSIONS: json.dumps(versions()), CURVES: json.dumps(curves),  # sent once per (re)start
             WORKER: record.worker_id(node=ray.get_runtime_context().get_node_id()[:12]),
             # PBT restarts a trial under new params: pbt_history records them
             PARAMS: json.dumps(record.pbt_step(_last_epoch(curves), dict(config)))}
    runs: list[dict] = []

    def on_epoch(epoch: int, per_seed) -> None:
        for i, metrics in enumerate(per_seed):
            curves[i] = record.merge_curve(curves[i], epoch, metrics)
        (local / "curves.json").write_text(json.dumps(curves))
        median = median_metrics(per_seed)
        report = {**median, record.EPOCH: epoch, SEEDS: json.dumps([dict(m) for m in per_seed]), **first}
        first.clear()
        tune.report(report, checkpoint=tune.Checkpoint.from_directory(str(local)))

    def on_run(rows: list[dict]) -> None:
        runs[:] = rows

    final: dict[str, Any] = {FINAL: 1}
    try:
        # A trial Ray gave no GPU trains on the CPU: Ray leaves GPUs visible to zero-GPU actors,
        # and a trial on one it has not accounted for would crowd the trials it gave that GPU.
        final[metric] = run_seeds(spec, values, on_epoch, on_run, pruned=(SystemExit,), checkpoint_dir=local,
                                  save_first=True, adopt=True, device="cpu" if spec.resources.gpu == 0 else None)
    except TrialError as e:
        final[ERROR] = str(e)
    except Exception as e:  # a bug: recorded like the Optuna engine records it, and the sweep goes on
        final[ERROR] = record.bug_text(e)
    finally:
        shutil.rmtree(local, ignore_errors=True)
    last = _last_epoch(curves)
    if ERROR in final:  # the scheduler sees the last epoch's value again, or a stand-in at epoch 0
        final[metric] = median_metrics([c[-1] for c in curves]).get(metric, _worst(spec)) \
            if curves and all(curves) else _worst(spec)
    tune.report({**first, **final, record.EPOCH: last, RUNS: json.dumps(runs), CURVES: json.dumps(curves)})


def _devices(spec: SweepSpec) -> set:
    """Every train.device a trial of the sweep can have."""
    return {spec.base.train.device} | {v for p in spec.space if p.key == "train.device"
                                       for v in getattr(p.dist, "tried", tuple)()}


def _last_epoch(curves: list[list[dict]]) -> int:
    return max((c[record.EPOCH] for c in curves[0]), default=0) if curves else 0


def _dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


# ---- the search: Ray's OptunaSearch over the spec's define-by-run space --

class _Space:
    """The define-by-run function (a class, so the searcher's state pickles)."""

    def __init__(self, spec: SweepSpec):
        self.spec = spec

    def __call__(self, trial) -> None:
        sampling.suggested(self.spec, trial)  # the params are captured by their Optuna names; derives come in the trial


_DEADLINE: float | None = None  # after it no new trial starts (budget.minutes: study.deadline)


class SweepSearch(OptunaSearch):
    """OptunaSearch that skips reports without the metric, tells failures as FAIL and
    early-stopped trials as PRUNED, and stops suggesting after the time budget."""

    def suggest(self, trial_id: str):
        if studies.past(_DEADLINE) and not compat.searcher_has_trial(self, trial_id):
            return Searcher.FINISHED
        return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        value = result.get(self.metric)
        if FINAL not in result and isinstance(value, (int, float)) and math.isfinite(value):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if not compat.searcher_has_trial(self, trial_id):
            return
        if result and ERROR in result:
            result, error = None, True
        elif result and FINAL not in result:  # stopped by the scheduler: PRUNED at its last report
            result = None
        super().on_trial_complete(trial_id, result=result, error=error)


def _search(spec: SweepSpec, trials, samples: int) -> tuple[Any, dict | None]:
    """Ray's search algorithm and param_space."""
    sampler = sampling.SAMPLERS.get(spec.sampler.name)(spec.sampler.seed + len(trials))  # a later experiment draws anew
    points = None
    if spec.sampler.name == "grid" and spec.grid_params:
        points = sampling.grid_queue(spec, trials, samples if samples >= 0 else GRID_CYCLES_UNBUDGETED * len(
            spec.grid_points()))
    if spec.pruner.name == "pbt":  # Ray's PBT takes no search algorithm: the population is drawn here
        return ray_pbt.population(spec, sampler, points or [], samples)
    return _optuna_search(spec, sampler, points), None


def _optuna_search(spec: SweepSpec, sampler, points) -> SweepSearch:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SweepSearch(space=_Space(spec), metric=spec.objective.metric, mode=spec.objective.mode,
                           sampler=sampler, points_to_evaluate=points)


class _Epochs:
    """A Ray trial's training length, from its config (a class, so the scheduler pickles)."""

    def __init__(self, spec: SweepSpec):
        self.spec = spec

    def __call__(self, config: dict) -> int:
        return self.spec.config(_values(self.spec, config)).train.epochs


# ---- the driver: Ray's results into the Optuna study ---------------------

class _Recorder:
    """Writes each finished Ray trial once into the study and prints its line."""

    def __init__(self, spec: SweepSpec, study: optuna.Study, progress: Progress, experiment: str):
        self.spec, self.study, self.progress, self.experiment = spec, study, progress, experiment
        trials = study.get_trials(deepcopy=False)
        self.written = {t.user_attrs[record.RAY_TRIAL_ID] for t in trials if record.RAY_TRIAL_ID in t.user_attrs}
        self.curves: dict[str, list[list[dict]]] = {}
        self.versions: dict[str, dict] = {}
        self.workers: dict[str, str] = {}
        self.params: dict[str, list[dict]] = {}  # the params a trial (re)started with, by epoch (PBT changes them)
        self.keep_checkpoints = spec.pruner.name == "pbt"  # a finished donor's may still be cloned
        self.events = 0  # results seen here: none when Tune's loop runs on the cluster (a ray:// address)

    def result(self, trial_id: str, result: dict) -> None:
        self.events += 1
        curves = self.curves.setdefault(trial_id, [[] for _ in range(self.spec.seeds)])
        if CURVES in result:
            curves[:] = json.loads(result[CURVES])
        if SEEDS in result:
            for i, metrics in enumerate(json.loads(result[SEEDS])):
                curves[i] = record.merge_curve(curves[i], result[record.EPOCH], metrics)
        if VERSIONS in result:
            self.versions[trial_id] = json.loads(result[VERSIONS])
        if WORKER in result:
            self.workers[trial_id] = result[WORKER]
        if PARAMS in result:
            self.params.setdefault(trial_id, []).append(json.loads(result[PARAMS]))

    def finished(self, trial_id: str, params: dict, last: dict, ray_error: str | None = None) -> None:
        """A trial that ended: complete, failed, or stopped early by the scheduler."""
        if trial_id is None or trial_id in self.written:
            return
        if not last and ray_error is None:  # never ran (stopped while pending): nothing to record
            return
        spec, metric = self.spec, self.spec.objective.metric
        self.result(trial_id, last)
        curves = self.curves.pop(trial_id, [[] for _ in range(spec.seeds)])
        values, params, distributions, fixed = _rebuild(spec, params)
        attrs: dict[str, Any] = {record.CONFIG: to_dict(spec.config(values)),
                                 record.VERSIONS: self.versions.pop(trial_id, None) or versions(), **fixed}
        if trial_id in self.workers:
            attrs[record.WORKER] = self.workers.pop(trial_id)
        history = self.params.pop(trial_id, [])
        # Explored by PBT: how it got its final params.
        if any({k: h[record.PBT_PARAMS].get(k) for k in params} != params for h in history):
            attrs[record.PBT_HISTORY] = history
        for i, curve in enumerate(curves):
            if curve:
                attrs[record.curve_key(i)] = curve
        value = None
        if ray_error is not None:
            state, attrs[record.ERROR] = TrialState.FAIL, ray_error
        elif ERROR in last:
            state, attrs[record.ERROR] = TrialState.FAIL, last[ERROR]
            attrs[record.RUNS] = json.loads(last.get(RUNS) or "[]")
        elif FINAL in last:
            state, value = TrialState.COMPLETE, float(last[metric])
            attrs[record.RUNS] = json.loads(last.get(RUNS) or "[]")
        else:
            state = TrialState.PRUNED
            attrs[record.RUNS] = [record.partial_row(spec.base.train.seed + i, curve, record.PRUNED)
                                  for i, curve in enumerate(curves)]
        intermediate = _intermediate(curves, metric)
        if state == TrialState.PRUNED and intermediate:  # as Optuna records a pruned trial
            last_value = intermediate[max(intermediate)]
            value = last_value if math.isfinite(last_value) else None
        attrs[record.RAY_TRIAL_ID], attrs[record.RAY_EXPERIMENT] = trial_id, self.experiment
        now = datetime.now()
        seconds = float(last.get("time_total_s") or 0.0)
        frozen = optuna.trial.create_trial(state=state, value=value, params=dict(params), distributions=distributions,
                                           user_attrs=attrs, intermediate_values=intermediate)
        frozen.datetime_start, frozen.datetime_complete = now - timedelta(seconds=seconds), now
        self.study.add_trial(frozen)
        self.written.add(trial_id)
        added = next(t for t in reversed(self.study.get_trials(deepcopy=False))
                     if t.user_attrs.get(record.RAY_TRIAL_ID) == trial_id)
        self.progress.trial_done(self.study, added)


    def drop_checkpoints(self, path: str | None) -> None:
        if not self.keep_checkpoints:
            _drop_checkpoints(path)


def _rebuild(spec: SweepSpec, config: dict[str, Any]):
    """Values, params, Optuna distributions and fixed.* attrs of a Ray trial's config: `sample`
    once more on an in-memory trial with the config enqueued, so they match the search exactly
    (and a name the config holds but the trial does not use is dropped)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(dict(config))
    trial = study.ask()
    try:
        values = sampling.sample(spec, trial)
    except TrialError:  # a derive that failed: the trial's error names it; its sampled values stand
        values = sampling.suggested(spec, trial)
    fixed = record.value_attrs(trial.user_attrs)
    return values, dict(trial.params), dict(trial.distributions), fixed


def _intermediate(curves: list[list[dict]], metric: str) -> dict[int, float]:
    """The median over seeds of the metric per epoch (what the Optuna engine reports)."""
    by_epoch: dict[int, list[float]] = {}
    for curve in curves:
        for point in curve:
            if metric in point:
                by_epoch.setdefault(point[record.EPOCH], []).append(point[metric])
    return {e: statistics.median(v) for e, v in sorted(by_epoch.items()) if len(v) == len(curves)}


_ACTIVE: _Recorder | None = None  # the running sweep's recorder (callbacks are pickled with the experiment)


class _Callback(tune.Callback):
    """Forwards Tune's trial events to the active recorder (holds no state, so it pickles)."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if _ACTIVE is not None:
            _ACTIVE.result(trial.trial_id, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if _ACTIVE is not None:
            _ACTIVE.finished(trial.trial_id, trial.config, dict(trial.last_result or {}))
            _ACTIVE.drop_checkpoints(trial.path)

    def on_trial_error(self, iteration, trials, trial, **info):
        if _ACTIVE is not None:
            _ACTIVE.finished(trial.trial_id, trial.config, dict(trial.last_result or {}), _ray_error(trial))
            _ACTIVE.drop_checkpoints(trial.path)


def _drop_checkpoints(path: str | None) -> None:
    """A finished trial's checkpoints (all seeds' weights) are no longer needed: the
    study holds its results. As the Optuna engine does; local storage only."""
    if path and os.path.isdir(path):
        for folder in Path(path).glob("checkpoint_*"):
            shutil.rmtree(folder, ignore_errors=True)


def _ray_error(trial) -> str:
    try:
        text = trial.get_error() or ""
    except Exception:  # storage gone: the reason is lost, the failure is not
        text = ""
    return _ray_failure(text)


def _ray_failure(error) -> str:
    """A trial that Ray failed (its actor died, an error outside run_seeds): the error's last line."""
    lines = [line for line in str(error or "").strip().splitlines() if line.strip()]
    return "ray: " + (lines[-1].strip()[:300] if lines else "the trial's actor failed")


# ---- the engine -----------------------------------------------------------

@contextlib.contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class RayEngine:
    joins_workers = False  # Ray schedules its own trials: `sweep worker` has nothing to join

    def check(self, spec: SweepSpec, workers: int | None = None, address: str | None = None) -> None:
        """What the Ray engine refuses in a spec (sweeps.check runs it before anything starts)."""
        sampling.check(spec)
        ray_schedulers.check(spec)
        devices, nodes = isolated.widest(spec)
        if devices * nodes > 1:
            raise spec.error(("base", "train.devices"), f"{devices * nodes} ranks per trial: the Ray engine trains "
                             "each trial in one process so far", "use --engine optuna for data-parallel trials on "
                             "one node", key="train.devices")
        if spec.resources.gpu == 0 and (cuda := next((d for d in _devices(spec) if str(d).startswith("cuda")), None)):
            raise spec.error(("resources", "gpu"), f"0 gives Ray's trials no GPU, and train.device is {cuda}",
                             "set resources.gpu (e.g. 1, or 0.5 to pack two trials on a GPU), or train.device auto")

    def run(self, spec: SweepSpec, options: RunOptions) -> RunSummary:
        with private_files():
            return self._run(spec, options)

    def _run(self, spec: SweepSpec, options: RunOptions) -> RunSummary:
        global _ACTIVE, _DEADLINE
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        self.check(spec, options.workers, options.address)
        scheduler = ray_schedulers.scheduler(spec, _Epochs(spec))  # refusals before anything is stored or started
        study, _ = studies.open_study(spec, options.storage, "ray")
        study.set_user_attr(record.ENGINE, "ray")
        budget = spec.trials
        trials = study.get_trials(deepcopy=False)
        before = studies.counted(study)
        finished = len(before)
        storage = Path(options.run_dir).expanduser().resolve() / "ray"
        ledger = _Ledger(storage / f"{spec.name}.sweep.json", studies.fingerprint(spec), spec.name)
        if budget is not None and finished >= budget:
            return studies.summary(study, spec, False, before)
        name, restore = ledger.experiment(trials)
        samples = -1 if budget is None else budget - finished

        if restore:  # before Ray unpickles anything of it
            check_private(storage, storage / name)
        started = False
        if not ray.is_initialized():
            if options.address:  # the cluster's own settings (README: securing a cluster)
                ray.init(address=options.address, logging_level=logging.ERROR, log_to_driver=not options.quiet)
            else:
                start_local_ray(os.cpu_count(), quiet=options.quiet)
            started = True
        progress = Progress(spec, budget, finished, quiet=options.quiet)
        _ACTIVE = _Recorder(spec, study, progress, name)
        _DEADLINE = studies.deadline(spec)
        interrupted = False
        try:
            trainable = tune.with_resources(
                tune.with_parameters(train_trial, spec=_absolute(spec, os.getcwd()), cwd=os.getcwd()),
                {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
            reuse = REUSE_ACTORS if REUSE_ACTORS is not None else _reuse_actors(spec)
            with _env(RAY_AIR_NEW_OUTPUT="0", TUNE_DISABLE_STRICT_METRIC_CHECKING="1",
                      TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S="0"), _quiet_logs():
                if restore:
                    tuner = tune.Tuner.restore(str(storage / name), trainable=trainable, resume_unfinished=True,
                                               resume_errored=False, restart_errored=False)
                else:
                    ledger.started(name, samples)
                    private_dir(storage / name)  # before Ray makes it, so it is 0700 from the start
                    search, space = _search(spec, trials, samples)
                    tuner = tune.Tuner(trainable, param_space=space, tune_config=tune.TuneConfig(
                        search_alg=search, scheduler=scheduler, num_samples=samples,
                        max_concurrent_trials=options.workers, reuse_actors=reuse,
                        trial_dirname_creator=_dirname),
                        run_config=tune.RunConfig(
                            name=name, storage_path=str(storage), verbose=0, callbacks=[_Callback()],
                            checkpoint_config=tune.CheckpointConfig(num_to_keep=_checkpoints_kept(spec))))
                results = tuner.fit()
            # What the callbacks did not write: a trial that finished just before a driver was
            # killed, or every trial when Tune's loop ran on the cluster (Ray Client, ray://).
            remote = _ACTIVE.events == 0
            for result in results:
                metrics = dict(result.metrics or {})
                metrics.setdefault("trial_id", Path(result.path).name.removeprefix("trial_") if result.path else None)
                if result.error is not None:
                    _ACTIVE.finished(metrics["trial_id"], result.config, metrics, _ray_failure(result.error))
                elif FINAL in metrics or (remote and metrics.get(record.EPOCH)):
                    _ACTIVE.finished(metrics["trial_id"], result.config, metrics)
                if _ACTIVE.keep_checkpoints and (result.error is not None or FINAL in metrics):
                    _drop_checkpoints(result.path)  # kept for clones until the population ended
        except KeyboardInterrupt:
            interrupted = True
        finally:
            _ACTIVE, _DEADLINE = None, None
            progress.close()
            if started:
                ray.shutdown()
        result = studies.summary(study, spec, interrupted, before)
        if budget is not None and result.finished < budget and not spec.budget.minutes:
            result = dataclasses.replace(result, interrupted=True)  # Ctrl-C: Ray stopped, the rest resumes
        return result


# ---- a local Ray on loopback only ----------------------------------------

# Ray binds its servers (GCS, raylet and object manager, core workers, runtime
# env and dashboard agents, metrics) to the node's IP; on Linux Ray takes the
# machine's own address and its gRPC servers listen on every interface. Where
# Ray clusters are off (its default on macOS and Windows) the node's IP is
# 127.0.0.1 and every server binds loopback only. `ray.init(_node_ip_address=
# "127.0.0.1")` does not do it: Ray swaps a loopback address for the machine's.


def start_local_ray(num_cpus: int | None, quiet: bool = True) -> None:
    """A Ray instance of the sweep's own, every port of its processes on loopback."""
    with compat.ray_single_machine():
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=not quiet)
    address = ray.util.get_node_ip_address()
    if not _loopback(address):  # a Ray release that picks the node's IP another way
        ray.shutdown()
        raise SweepError(f"the local Ray started on {address}, not on loopback, so its ports would be open to "
                         f"the network; fix: install the Ray release this package was tested with (2.60) or use "
                         f"--engine optuna")


def _loopback(address: str) -> bool:
    import ipaddress
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address == "localhost"
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


# ---- files Ray unpickles: ours alone --------------------------------------

@contextlib.contextmanager
def private_files():
    """What the engine and its local Ray create is 0700/0600 (a new study included): a
    resume refuses what others can write, so a umask of 002 must not make ours so."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def check_private(storage: Path, folder: Path) -> None:
    """Tuner.restore unpickles the experiment's files (tuner.pkl, the searcher's state,
    trials' state): a file another user planted there would run as us. As ssh does
    with its keys, refuse the folder when another user owns or can write it, a folder
    above it up to `storage` (`<--dir>/ray`), or anything inside it."""
    above = [folder, *[p for p in folder.parents if p == storage or storage in p.parents]]
    for path in reversed(above):
        _check_owned(path, folder)
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            _check_owned(Path(root) / name, folder)


def _check_owned(path: Path, folder: Path) -> None:
    info = os.stat(path)  # a link is judged by what it points to: that is what Ray reads
    if info.st_uid != os.getuid():
        why = f"is owned by uid {info.st_uid}, not by you (uid {os.getuid()})"
        fix = f"if you trust it, chown -R {os.getuid()} {path}; else delete {folder}"
    elif info.st_mode & 0o022:
        why = f"can be written by other users (mode {info.st_mode & 0o777:o})"
        fix = f"if you trust it, chmod -R go-w {path}; else delete {folder}"
    else:
        return
    raise SweepError(f"{path} {why}: resuming the Ray experiment would unpickle files that another user could have "
                     f"planted; fix: {fix}")


def _reuse_actors(spec: SweepSpec) -> bool:
    """Reuse an actor for the next trial unless trials are isolated (resources.isolate; auto:
    trials on a GPU get a fresh actor each, so no CUDA allocator state leaks between them)."""
    how = spec.resources.isolate
    return how == "never" or (how == "auto" and spec.resources.gpu == 0)


def _checkpoints_kept(spec: SweepSpec) -> int | None:
    """The last epoch's checkpoint resumes a trial. PBT keeps them all: a clone waiting for
    a free slot restores its donor's checkpoint from the donor's last perturbation, however
    far the donor has gone on since (they are removed when the experiment ends)."""
    return None if spec.pruner.name == "pbt" else 1


class _Ledger:
    """`<run_dir>/ray/<name>.sweep.json`: which sweep the Ray experiments belong to, each
    experiment's trial budget, and the one to resume. A sweep whose budget grew after its
    experiment ran out gets a further experiment (`<name>-2`, ...) for the missing trials."""

    def __init__(self, path: Path, fingerprint: str, name: str):
        self.path, self.name = path, name
        self.state = json.loads(path.read_text()) if path.exists() else {}
        if self.state.get("fingerprint", fingerprint) != fingerprint:
            raise SweepError(f"{path.parent} holds Ray experiments of another sweep named {name!r}; fix: give this "
                             "sweep another name (--set name=...), another --dir, or delete them")
        self.state.update(fingerprint=fingerprint)
        self.state.setdefault("experiments", {})

    def experiment(self, trials) -> tuple[str, bool]:
        """(name, restore): the current experiment while it has trials to run, else a new one."""
        current = self.state.get("current")
        if current and tune.Tuner.can_restore(str(self.path.parent / current)):
            samples = self.state["experiments"].get(current, -1)
            done = sum(t.user_attrs.get("ray_experiment") == current for t in trials)
            if samples < 0 or done < samples:
                return current, True
        k = len(self.state["experiments"]) + 1
        while (name := self.name if k == 1 else f"{self.name}-{k}") in self.state["experiments"] \
                or (self.path.parent / name).exists():
            k += 1
        return name, False

    def started(self, name: str, samples: int) -> None:
        self.state["experiments"][name] = samples
        self.state["current"] = name
        private_dir(self.path.parent)
        # Written whole or not at all (a driver killed mid-write leaves the old ledger), 0600.
        temporary = self.path.with_name(self.path.name + ".tmp")
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(json.dumps(self.state, indent=1) + "\n")
        os.replace(temporary, self.path)


@contextlib.contextmanager
def _quiet_logs():
    """Ray Tune's own logging above errors only: our progress prints a line per trial."""
    loggers = [logging.getLogger(n) for n in ("ray", "ray.tune", "ray.train", "ray.air")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
