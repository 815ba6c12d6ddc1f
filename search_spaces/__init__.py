"""The YAML spec language: distributions, conditions, overrides, validation."""
from .describe import describe
from .errors import SpecError
from .load import load_spec, parse_override, parse_spec, sweep_name, valid_name
from .spec import Param, SweepSpec

__all__ = ["load_spec", "parse_spec", "parse_override", "sweep_name", "valid_name", "describe", "SpecError", "SweepSpec", "Param"]
