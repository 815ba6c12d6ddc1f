"""Finished (or running) sweeps into pandas: one row per trial run (config x seed).

Reads stored results only; it never imports the trainable.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from sweeps.storage import DEFAULT_DIR, resolve, sqlite_file

META = ["trial", "seed", "state"]
METRICS = ["val_error", "best_val_error", "test_error", "epochs_done", "duration_s", "images_per_s",
           "train_loss", "train_error", "val_loss", "error"]
STATE = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
         "WAITING": "waiting"}


class SweepNotFound(LookupError):
    pass


def sweep_name(name_or_spec) -> str:
    """A sweep's name from a SweepSpec, a spec file path or the name itself."""
    if hasattr(name_or_spec, "name") and hasattr(name_or_spec, "space"):
        return name_or_spec.name
    text = str(name_or_spec)
    if text.endswith((".yaml", ".yml")) and Path(text).is_file():
        import yaml
        data = yaml.safe_load(Path(text).read_text()) or {}
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            return data["name"]
        raise SweepNotFound(f"{text}: the spec has no name; fix: add `name: ...` to it")
    return text


def open_study(name_or_spec, storage: str | None = None, directory: str | Path = DEFAULT_DIR) -> optuna.Study:
    name = sweep_name(name_or_spec)
    url = resolve(name, storage, directory)
    path = sqlite_file(url)
    if path is not None and not path.exists():  # opening would create an empty database
        raise SweepNotFound(f"no sweep {name!r}: {path} does not exist; fix: run `sweep run SPEC` first, "
                            "or pass --storage/--dir where it was stored")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return optuna.load_study(study_name=name, storage=url, sampler=optuna.samplers.RandomSampler())
        except KeyError:
            names = optuna.get_all_study_names(url)
            raise SweepNotFound(f"no sweep {name!r} in {url}; fix: use one of {names}") from None


def _trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials without interrupted runs that were retried (their retry stands for them)."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retried") for t in trials}
    return [t for t in trials if t.number not in retried and t.state.name != "WAITING"]


def _params(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """Sampled, fixed and derived values by dotted key (the last two are user attrs: Optuna
    cannot store a list, and a derived value is not sampled); 'key[cond]' folds into 'key'.
    """
    attrs = {k.partition(".")[2]: v for k, v in t.user_attrs.items() if k.startswith(("fixed.", "derived."))}
    # A list (e.g. model.stage_channels) becomes a tuple, so pandas can group and count by it.
    return {k.split("[", 1)[0]: tuple(v) if isinstance(v, list) else v for k, v in {**t.params, **attrs}.items()}


def _base_seed(t) -> int:
    return int(t.user_attrs.get("config", {}).get("train", {}).get("seed", 0))


def _in_flight(t, index: int, state: str) -> dict[str, Any]:
    """The run a trial was on when it stopped (or is on now), from its curve."""
    curve = t.user_attrs.get(f"curve.{index}", [])
    last = curve[-1] if curve else {}
    return {"seed": _base_seed(t) + index, "state": state, "epochs_done": len(curve),
            "error": t.user_attrs.get("error", "interrupted") if state == "failed" else None,
            "best_val_error": min((c["val_error"] for c in curve), default=None),
            **{k: last.get(k) for k in ("val_error", "train_loss", "train_error", "val_loss", "images_per_s")}}


def load(name_or_spec, storage: str | None = None, directory: str | Path = DEFAULT_DIR) -> pd.DataFrame:
    """One row per trial run: trial, seed, state, the sampled parameters, the metrics and the error."""
    study = open_study(name_or_spec, storage, directory)
    rows, param_keys = [], {}
    for t in _trials(study):
        params = _params(t)
        param_keys.update(dict.fromkeys(params))
        state = STATE.get(t.state.name, t.state.name.lower())
        runs = list(t.user_attrs.get("runs") or [])
        if state == "running" or (state == "failed" and not any(r.get("state") == "failed" for r in runs)):
            runs.append(_in_flight(t, len(runs), state))
        for run in runs:
            rows.append({"trial": t.number, "seed": run.get("seed"), "state": run.get("state", state),
                         **params, **{k: run.get(k) for k in METRICS}})
    columns = META + list(param_keys) + METRICS
    frame = pd.DataFrame(rows, columns=columns)
    for col in METRICS:
        if col != "error":
            frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame.attrs["name"] = study.study_name
    frame.attrs["storage"] = resolve(study.study_name, storage, directory)  # for curves and the study
    frame.attrs["params"] = list(param_keys)
    frame.attrs["spec"] = study.user_attrs.get("spec", {})
    frame.attrs["reference"] = study.user_attrs.get("reference", [])  # rows as fractions (with_reference)
    return frame


def curves(name_or_spec, storage: str | None = None, directory: str | Path = DEFAULT_DIR) -> pd.DataFrame:
    """Per-epoch metrics in long form: trial, seed, epoch, metric, value."""
    study = open_study(name_or_spec, storage, directory)
    rows = []
    for t in _trials(study):
        base = _base_seed(t)
        for key, curve in t.user_attrs.items():
            if not key.startswith("curve."):
                continue
            seed = base + int(key.split(".", 1)[1])
            for point in curve:
                epoch = point["epoch"]
                rows += [(t.number, seed, epoch, m, v) for m, v in point.items() if m != "epoch"]
    return pd.DataFrame(rows, columns=["trial", "seed", "epoch", "metric", "value"])
