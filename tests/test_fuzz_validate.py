"""Generated malformed specs and `--set` values: each one a SpecError or a valid spec, never a traceback
(benchmarks/fuzz_validate.py runs more of them and times them)."""
from __future__ import annotations

from benchmarks.fuzz_validate import run


def test_malformed_specs_and_overrides_never_give_a_traceback():
    stats = run(200, seed=0)
    assert stats["tracebacks"] == 0 and stats["examples"] == 200
    assert stats["refused"] > 100  # the generator does reach the error paths
