"""The stored record (sweeps.record), the grid queue (sweeps.sampling) and the up-front check
(sweeps.check): fast, on real Optuna trials and real spec files."""
from __future__ import annotations

import dataclasses

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

import analysis
import sweeps
from conftest import tiny_spec
from search_spaces import SpecError, load_spec
from sweeps import record, sampling, study as studies
from trainable.errors import UserError


def trial(state=TrialState.COMPLETE, **attrs):
    return create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None, user_attrs=attrs)


# ---- the record ----------------------------------------------------------------

def test_merge_curve_replaces_a_repeated_epoch_and_what_followed():
    curve = [{"epoch": 1, "val_error": 0.5}, {"epoch": 2, "val_error": 0.4}, {"epoch": 3, "val_error": 0.3}]
    assert record.merge_curve(curve, 2, {"val_error": 0.45}) == [{"epoch": 1, "val_error": 0.5},
                                                                 {"epoch": 2, "val_error": 0.45}]
    assert record.merge_curve([], 1, {"val_error": 0.9}) == [{"epoch": 1, "val_error": 0.9}]


def test_a_partial_row_holds_the_last_epoch_and_the_best_val_error():
    history = [{"epoch": 1, "val_error": 0.4, "train_loss": 2.0, "lr": 0.1},
               {"epoch": 2, "val_error": 0.6, "train_loss": 1.5, "lr": 0.05}]
    row = record.partial_row(7, history, record.PRUNED)
    assert row == {"seed": 7, "val_error": 0.6, "train_loss": 1.5, "state": "pruned", "epochs_done": 2,
                   "best_val_error": 0.4, "error": None}
    empty = record.partial_row(0, [], record.FAILED, "diverged")
    assert empty["epochs_done"] == 0 and empty["best_val_error"] is None and empty["error"] == "diverged"


def test_a_complete_row_has_every_run_key():
    result = {k: 1.0 for k in record.RUN_KEYS}
    assert set(record.complete_row(0, result)) == {*record.RUN_KEYS, "seed", "state", "error"}


def test_what_counts_toward_the_budget():
    assert record.counts_toward_budget(trial())
    assert record.counts_toward_budget(trial(TrialState.PRUNED))
    failed = trial(TrialState.FAIL, error="diverged at epoch 1, step 3")
    assert record.counts_toward_budget(failed) and not record.is_interrupted(failed)
    interrupted = trial(TrialState.FAIL)
    assert not record.counts_toward_budget(interrupted) and record.is_interrupted(interrupted)
    assert not record.counts_toward_budget(create_trial(state=TrialState.WAITING))


def test_bug_text_and_value_attrs():
    assert record.bug_text(KeyError("x")) == "KeyError: 'x'"
    attrs = {"fixed.model.stage_channels": [1, 2], "derived.optim.lr": 0.1, "config": {}, "curve.0": []}
    assert record.recorded_values(attrs) == {"model.stage_channels": [1, 2], "optim.lr": 0.1}
    assert record.curves(attrs) == {0: []} and record.base_seed({"config": {"train": {"seed": 3}}}) == 3


def test_a_new_study_records_the_schema_and_one_without_it_reads_as_schema_0(write_spec, tmp_path):
    spec = load_spec(write_spec(tiny_spec()))
    study, created = studies.open_study(spec, f"sqlite:///{tmp_path}/new.db", "optuna")
    assert created and record.schema(study.user_attrs) == record.SCHEMA_VERSION == 1
    assert record.schema({}) == 0
    # A study as releases before the schema attr wrote it: the same layout, read alike.
    url = f"sqlite:///{tmp_path}/old.db"
    old = optuna.create_study(study_name="old", storage=url)
    curve = [{"epoch": 1, "val_error": 0.5, "train_loss": 1.0}]
    old.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"config": {"train": {"seed": 4}}, "curve.0": curve,
                                                                    "error": "diverged"}))
    frame = analysis.load("old", url)
    assert frame.attrs["schema"] == 0
    assert frame.loc[0, ["seed", "state", "epochs_done", "error"]].tolist() == [4, "failed", 1, "diverged"]


# ---- the grid queue ---------------------------------------------------------------

def grid_trial(lr, state=TrialState.COMPLETE, **attrs):
    return create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None, params={"optim.lr": lr},
                        distributions={"optim.lr": CategoricalDistribution([0.1, 0.2, 0.3])}, user_attrs=attrs)


def test_the_grid_queue_runs_the_least_used_point_first_and_continues_the_cycle(write_spec):
    spec = load_spec(write_spec(tiny_spec(sampler={"name": "grid"}, space={"optim.lr": {"grid": [0.1, 0.2, 0.3]}})))
    study = optuna.create_study()
    study.add_trial(grid_trial(0.1))
    study.add_trial(grid_trial(0.1, TrialState.PRUNED))
    study.add_trial(grid_trial(0.3, TrialState.FAIL))            # interrupted: counts through its retry
    study.enqueue_trial({"optim.lr": 0.2})                        # enqueued work counts
    trials = study.get_trials(deepcopy=False)
    assert [p["optim.lr"] for p in sampling.grid_queue(spec, trials, 4)] == [0.3, 0.2, 0.3, 0.1]
    assert sampling.next_grid_point(spec, trials) == {"optim.lr": 0.3}
    assert sampling.next_grid_point(load_spec(write_spec(tiny_spec(), "flat.yaml")), trials) is None


# ---- the up-front check -------------------------------------------------------------

def spec_file(write_spec, **top):
    base = {"sampler": {"name": "random"}, "pruner": {"name": "median"}}
    return load_spec(write_spec({**tiny_spec(**base), **top}))


def with_name(spec, block: str, name: str):
    return dataclasses.replace(spec, **{block: dataclasses.replace(getattr(spec, block), name=name)})


def test_check_refuses_unknown_names_at_their_line(write_spec):
    spec = spec_file(write_spec)
    with pytest.raises(SpecError, match=r"spec\.yaml:\d+ engine: unknown engine 'optunaa'"):
        sweeps.check(dataclasses.replace(spec, engine="optunaa"))
    with pytest.raises(SpecError, match=r"spec\.yaml:\d+ sampler\.name: unknown sampler 'tpee'") as sampler:
        sweeps.check(with_name(spec, "sampler", "tpee"))
    with pytest.raises(SpecError, match=r"spec\.yaml:\d+ pruner\.name: unknown pruner 'medain'") as pruner:
        sweeps.check(with_name(spec, "pruner", "medain"))
    assert sampler.value.line and pruner.value.line and sampler.value.line < pruner.value.line


def test_check_refuses_pbt_on_optuna_and_what_pbt_on_ray_cannot_run(write_spec):
    pbt = spec_file(write_spec, pruner={"name": "pbt"})
    with pytest.raises(SpecError, match=r"spec\.yaml:\d+ pruner\.name: pbt runs on the Ray engine only"):
        sweeps.check(pbt)
    ray = dataclasses.replace(pbt, engine="ray")
    sweeps.check(ray)
    with pytest.raises(SpecError, match="pruner.name: pbt perturbs continuous parameters"):
        sweeps.check(dataclasses.replace(ray, space=()))
    with pytest.raises(SpecError, match=r"spec\.yaml:\d+ budget\.trials: pbt needs a population"):
        sweeps.check(dataclasses.replace(ray, budget=dataclasses.replace(ray.budget, trials=1)))
    with pytest.raises(SpecError, match="objective.metric: pbt compares trials every epoch"):
        sweeps.check(dataclasses.replace(ray, objective=dataclasses.replace(ray.objective, metric="test_error")))


def test_check_refuses_bad_workers_and_a_worker_on_a_ray_sweep(write_spec, tmp_path):
    spec = spec_file(write_spec)
    with pytest.raises(sweeps.SweepError, match="--workers: must be at least 1"):
        sweeps.check(spec, workers=0)
    with pytest.raises(SpecError, match="`sweep worker` joins Optuna sweeps"):
        sweeps.check(dataclasses.replace(spec, engine="ray"), worker=True)
    url = sweeps.resolve(spec.name, None, tmp_path / "runs", create=True)
    with pytest.raises(sweeps.SweepError):
        sweeps.run(spec, url, workers=0)
    assert not list((tmp_path / "runs").iterdir())  # refused before anything was stored


def test_the_optuna_pruners_and_the_ray_schedulers_have_the_same_names():
    from sweeps.optuna_work import PRUNERS
    from sweeps.ray_schedulers import SCHEDULERS
    assert PRUNERS.names() == SCHEDULERS.names()


def test_user_facing_errors_derive_from_user_error():
    assert issubclass(sweeps.SweepError, UserError) and issubclass(analysis.SweepNotFound, UserError)
