"""Malformed specs and `--set` values fed to `sweep validate`: every one must end in a SpecError (one line)
or a valid spec, never a traceback or a hang.

    python benchmarks/fuzz_validate.py [--examples 1000] [--seed 0]

prints the count of examples, of refusals, of tracebacks (must be 0) and the slowest example's seconds.
The strategies here also drive tests/test_fuzz_validate.py (fewer examples, in the default tests).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sweeps  # noqa: E402
from search_spaces import load_spec, parse_spec  # noqa: E402
from trainable.config import leaf_keys  # noqa: E402
from trainable.context import Context  # noqa: E402
from trainable.errors import UserError  # noqa: E402

HANG_S = 10  # an example still running after this is a hang (the measured time is what counts)
VALID = {"name": "fz", "budget": {"trials": 2}, "base": {"data": {"subset": 1000}, "train": {"epochs": 1}},
         "space": {"optim.lr": {"loguniform": [0.01, 0.1]}, "train.batch_size": {"choice": [32, 64]}}}
KEYS = sorted(leaf_keys())
TOP = ["name", "engine", "seeds", "objective", "budget", "sampler", "pruner", "resources", "base", "variants",
       "space", "presets", "reference"]
DISTS = ["loguniform", "uniform", "int", "choice", "grid", "fixed", "derive", "when", "step", "log"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["1e-4", "-", "sgd", "cuda", "tv:resnet18", "\n", "0x10"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)
keys = st.one_of(st.sampled_from(KEYS + TOP + DISTS), st.text(max_size=12))
expressions = st.one_of(
    st.text(alphabet="0123456789.+-*/%() ,eaxintrobuschlgmpqd_", max_size=60),
    st.sampled_from(["round(train.batch_size, -int(1e12))", "int(1e308) * int(1e308)", "2 ** 2 ** 2 ** 2 ** 2",
                     "-" * 3000 + "1", " + ".join(["1"] * 300), "exp(exp(exp(10)))", "log(0)", "1 / 0"]))


@st.composite
def mutated_specs(draw) -> str:
    """A valid spec with random entries set, replaced or deleted at random places, as YAML text."""
    spec = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(["top", "base", "space", "derive", "variants", "presets"]))
        key, value = draw(keys), draw(values)
        if where == "top":
            spec[draw(st.sampled_from(TOP))] = value
        elif where == "base":
            spec["base"] = {**(spec.get("base") if isinstance(spec.get("base"), dict) else {}), key: value}
        elif where == "space":
            spec["space"] = {draw(st.sampled_from(KEYS)): {draw(st.sampled_from(DISTS)): value}}
        elif where == "derive":
            spec["space"] = {**VALID["space"], draw(st.sampled_from(KEYS)): {"derive": draw(expressions)}}
        elif where == "variants":
            spec["variants"] = {"a": {}, "b": {draw(st.sampled_from(KEYS)): value}}
        else:
            spec["presets"] = {"p": {f"base.{draw(st.sampled_from(KEYS))}": value}}
    return yaml.safe_dump(spec, allow_unicode=True)


raw_texts = st.one_of(
    st.text(max_size=300),
    st.sampled_from([
        "[" * 5000 + "]" * 5000, "a: &a [1, 1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1 if i > 1 else ''}, *a{i - 1 if i > 1 else ''}]\n".replace("*a0", "*a") for i in range(1, 30)),
        "name: t\nbudget: {trials: 1}\nbase:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(200)),
        "name: t\n" * 3, "\ufeffname: t", "name: !!python/object:os.system x", "--- !!binary AAAA",
    ]))
overrides = st.lists(st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.one_of(st.sampled_from([f"base.{k}" for k in KEYS] + TOP), st.text(max_size=12)),
              st.one_of(st.text(max_size=40), st.sampled_from(["[1", "{a: ", "*x", "&a [*a]", "[" * 3000]))),
    st.text(max_size=30)), max_size=3)


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"an example ran past {HANG_S} s")


def check_one(text: str, sets: list[str]) -> tuple[str, float]:
    """('ok' | 'refused', seconds) for one example; anything else (a bug, a hang) raises."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_S)
    t0 = time.perf_counter()
    try:
        sweeps.check(parse_spec(text, "fuzz.yaml", sets, context=Context(device="cpu")))  # as `sweep validate`
        outcome = "ok"
    except UserError:
        outcome = "refused"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return outcome, time.perf_counter() - t0


examples = st.tuples(st.one_of(mutated_specs(), raw_texts), overrides)


def run(n: int, seed: int) -> dict:
    stats = {"examples": 0, "refused": 0, "valid": 0, "tracebacks": 0, "slowest_s": 0.0}

    @settings(max_examples=n, database=None, derandomize=False, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(examples)
    def one(example):
        text, sets = example
        try:
            outcome, seconds = check_one(text, sets)
        except Exception:  # a traceback a user would see: counted, shown once
            stats["tracebacks"] += 1
            if stats["tracebacks"] == 1:
                import traceback
                traceback.print_exc()
            return
        stats["examples"] += 1
        stats["refused" if outcome == "refused" else "valid"] += 1
        stats["slowest_s"] = max(stats["slowest_s"], seconds)

    import random
    random.seed(seed)
    one()
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    load_spec(Path(__file__).resolve().parent.parent / "spaces" / "quickstart.yaml")  # imports warm
    t0 = time.perf_counter()
    stats = run(args.examples, args.seed)
    print(json.dumps({**stats, "slowest_s": round(stats["slowest_s"], 3), "wall_s": round(time.perf_counter() - t0, 1)}))
    sys.exit(1 if stats["tracebacks"] else 0)


if __name__ == "__main__":
    main()
