"""Finished (or running) sweeps into pandas: one row per trial run (config x seed).

Reads stored results only, through sweeps.record (the stored record's one home);
it never imports the trainable or an engine.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import sqlalchemy.exc

from sweeps import record
from sweeps.storage import DEFAULT_DIR, ResultsError, masked, resolve, shown, sqlite_file

META = ["trial", record.SEED, record.STATE]
METRICS = [*record.RUN_KEYS, record.ERROR]
STATE = {"COMPLETE": record.COMPLETE, "PRUNED": record.PRUNED, "FAIL": record.FAILED, "RUNNING": record.RUNNING,
         "WAITING": "waiting"}


class SweepNotFound(ResultsError, LookupError):
    """No stored sweep of that name (or no storage where it was looked for)."""


class StorageUnreadable(ResultsError):
    """The storage cannot be read: not a database, a server that does not answer, a wrong URL."""


def _unreadable(url: str, e: Exception) -> StorageUnreadable:
    text = masked(str(e).strip().splitlines()[0][:200] if str(e).strip() else "", url)
    path = sqlite_file(url)
    if path is not None and path.is_dir():
        fix = f"{path} is a folder: pass --dir or --storage where the sweep's results are"
    elif path is not None:
        fix = (f"{path} is not a readable sweep database (damaged, or another kind of file): restore it from "
               "a copy, or move it aside and run the sweep again")
    else:
        fix = "check that the database server runs and the URL (host, port, user, password, database)"
    return StorageUnreadable(f"cannot read {shown(url)}: {type(e).__name__}: {text}; fix: {fix}")


def sweep_name(name_or_spec) -> str:
    """A sweep's name from a SweepSpec or the name itself (the CLI and the notebook turn a spec
    file into its name with search_spaces.sweep_name)."""
    if hasattr(name_or_spec, "name") and hasattr(name_or_spec, "space"):
        return name_or_spec.name
    return str(name_or_spec)


def open_study(name_or_spec, storage: str | None = None, directory: str | Path = DEFAULT_DIR) -> optuna.Study:
    name = sweep_name(name_or_spec)
    url = resolve(name, storage, directory)
    path = sqlite_file(url)
    if path is not None and not path.exists():  # opening would create an empty database
        raise SweepNotFound(f"no sweep {name!r}: {path} does not exist; fix: run `sweep run SPEC` first, "
                            "or pass --storage/--dir where it was stored")
    if path is not None and path.is_dir():
        raise _unreadable(url, IsADirectoryError(f"{path} is a folder"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            try:
                return optuna.load_study(study_name=name, storage=url, sampler=optuna.samplers.RandomSampler())
            except KeyError:
                names = optuna.get_all_study_names(url)
                raise SweepNotFound(f"no sweep {name!r} in {shown(url)}; fix: use one of {names}") from None
        except ResultsError:
            raise
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, ImportError, OSError) as e:
            raise _unreadable(url, e) from None  # a damaged file, a server that does not answer, no driver


def _trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials without interrupted runs that were retried (their retry stands for them)."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(record.RETRIED) for t in trials}
    return [t for t in trials if t.number not in retried and t.state.name != "WAITING"]


def _params(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """Sampled, fixed and derived values by dotted key (the last two are user attrs: Optuna
    cannot store a list, and a derived value is not sampled); 'key[cond]' folds into 'key'.
    """
    attrs = record.recorded_values(t.user_attrs)
    # A list (e.g. model.stage_channels) becomes a tuple, so pandas can group and count by it.
    return {k.split("[", 1)[0]: tuple(v) if isinstance(v, list) else v for k, v in {**t.params, **attrs}.items()}


def _in_flight(t, index: int, state: str) -> dict[str, Any]:
    """The run a trial was on when it stopped (or is on now), from its curve."""
    error = t.user_attrs.get(record.ERROR, record.INTERRUPTED) if state == record.FAILED else None
    return record.partial_row(record.base_seed(t.user_attrs) + index,
                              t.user_attrs.get(record.curve_key(index), []), state, error)


def load(name_or_spec, storage: str | None = None, directory: str | Path = DEFAULT_DIR) -> pd.DataFrame:
    """One row per trial run: trial, seed, state, the sampled parameters, the metrics and the error."""
    study = open_study(name_or_spec, storage, directory)
    rows, param_keys = [], {}
    for t in _trials(study):
        params = _params(t)
        param_keys.update(dict.fromkeys(params))
        state = STATE.get(t.state.name, t.state.name.lower())
        runs = list(t.user_attrs.get(record.RUNS) or [])
        if state == record.RUNNING or (state == record.FAILED
                                       and not any(r.get(record.STATE) == record.FAILED for r in runs)):
            runs.append(_in_flight(t, len(runs), state))
        for run in runs:
            rows.append({"trial": t.number, record.SEED: run.get(record.SEED),
                         record.STATE: run.get(record.STATE, state), **params, **{k: run.get(k) for k in METRICS}})
    columns = META + list(param_keys) + METRICS
    frame = pd.DataFrame(rows, columns=columns)
    for col in METRICS:
        if col != "error":
            frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame.attrs["name"] = study.study_name
    frame.attrs["storage"] = resolve(study.study_name, storage, directory)  # for curves and the study
    frame.attrs["params"] = list(param_keys)
    frame.attrs["spec"] = study.user_attrs.get(record.SPEC, {})
    frame.attrs["reference"] = study.user_attrs.get(record.REFERENCE, [])  # rows as fractions (with_reference)
    frame.attrs["schema"] = record.schema(study.user_attrs)
    return frame


def curves(name_or_spec, storage: str | None = None, directory: str | Path = DEFAULT_DIR) -> pd.DataFrame:
    """Per-epoch metrics in long form: trial, seed, epoch, metric, value."""
    study = open_study(name_or_spec, storage, directory)
    rows = []
    for t in _trials(study):
        base = record.base_seed(t.user_attrs)
        for index, curve in record.curves(t.user_attrs).items():
            for point in curve:
                epoch = point[record.EPOCH]
                rows += [(t.number, base + index, epoch, m, v) for m, v in point.items() if m != record.EPOCH]
    return pd.DataFrame(rows, columns=["trial", "seed", "epoch", "metric", "value"])
