"""Checks: what a healthy KSM never holds, as findings.

One collection pass (:mod:`ksminspect.collect`) reads what the walks reach
into columns; each check is one registered function over them, in
:mod:`ksminspect.checks.rules` (a module per structure). ``CHECKS``,
``--only`` and its completion, and the README's table come from the registry.
"""

from ksminspect.checks import rules  # noqa: F401  (registers every rule, in order)
from ksminspect.checks.engine import (RULES, CheckReport, Finding, Rule, Severity, check_live,
                                      run_checks)

# check id -> what a healthy KSM keeps
CHECKS: dict[str, str] = {r.id: r.keeps for r in RULES}

__all__ = ["CHECKS", "RULES", "CheckReport", "Finding", "Rule", "Severity", "check_live", "run_checks"]
