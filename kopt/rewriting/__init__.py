"""The rewriting room: Rule and Match (and their contract), the registry, the pass manager
and verification. Imports `kopt.errors`, `kopt.ir` and `kopt.keras_io` only; the rules
themselves live in the top-level `rewrites/` package, one module each.
"""

from kopt.rewriting.manager import PassManager, Report
from kopt.rewriting.registry import register, registered
from kopt.rewriting.rule import Match, PlacedRule, Rule
from kopt.rewriting.verify import max_relative_error

__all__ = ["Match", "PassManager", "PlacedRule", "Report", "Rule", "max_relative_error",
           "register", "registered"]
