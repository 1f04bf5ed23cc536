"""What each Evidently stat test's score means, so the gate can turn scores into verdicts.

Evidently 0.7 reports a drift *score* per column but no drift boolean; the
comparison below mirrors the one inside each Evidently stat test (read from
``evidently/legacy/calculations/stattests/*.py``, 0.7.23), and a test checks
the derived verdicts against Evidently's own test statuses.

``sampling`` says how a test may be fed a sample of a large frame:

* ``distance``: the score estimates a population distance (a metric or
  divergence), so a uniform sample of each side estimates it with an error
  that shrinks like 1/sqrt(n): sample both sides.
* ``two_sample``: a p-value whose power depends on the effective size
  n*m/(n+m); only the larger side may be cut, to 50x the smaller, which keeps
  the effective size within 2% of the full data's.
* ``exact``: a goodness-of-fit p-value of the current counts against the
  reference proportions; it grows with the current size, so never sampled.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable, Literal

Sampling = Literal["distance", "two_sample", "exact"]


@dataclass(frozen=True)
class StatTestKind:
    name: str
    p_value: bool
    drifted: Callable[[float, float], bool]
    sampling: Sampling
    op: str

    def verdict(self, score: float, threshold: float) -> bool:
        return bool(self.drifted(score, threshold))


def _k(name: str, p_value: bool, op: str, sampling: Sampling) -> StatTestKind:
    ops = {"<": operator.lt, "<=": operator.le, ">=": operator.ge, ">": operator.gt}
    return StatTestKind(name, p_value, ops[op], sampling, op)


STAT_TESTS: dict[str, StatTestKind] = {
    k.name: k
    for k in (
        # p-values: drift when the p-value is below (or at) the threshold
        _k("ks", True, "<=", "two_sample"),
        _k("cramer_von_mises", True, "<=", "two_sample"),
        _k("anderson", True, "<", "two_sample"),
        _k("mannw", True, "<", "two_sample"),
        _k("t_test", True, "<", "two_sample"),
        _k("es", True, "<", "two_sample"),
        _k("empirical_mmd", True, "<", "two_sample"),
        _k("z", True, "<", "two_sample"),
        _k("fisher_exact", True, "<", "two_sample"),
        _k("TVD", True, "<", "two_sample"),
        _k("chisquare", True, "<", "exact"),
        _k("g_test", True, "<", "exact"),
        # distances / divergences: drift when the score is at (or above) the threshold
        _k("wasserstein", False, ">=", "distance"),
        _k("jensenshannon", False, ">=", "distance"),
        _k("psi", False, ">=", "distance"),
        _k("kl_div", False, ">=", "distance"),
        _k("hellinger", False, ">=", "distance"),
        _k("ed", False, ">", "distance"),
    )
}


def stat_test_kind(name: str) -> StatTestKind:
    """The kind of a supported test; ``KeyError`` with the supported names otherwise."""
    try:
        return STAT_TESTS[name]
    except KeyError:
        raise KeyError(
            f"unsupported drift method {name!r} (supported: {', '.join(sorted(STAT_TESTS))})"
        ) from None
