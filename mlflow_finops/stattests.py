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


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">=": operator.ge,
    ">": operator.gt,
}


@dataclass(frozen=True)
class StatTestKind:
    """One test: whether its score is a p-value, how score and threshold compare when it drifts, and how it
    may be sampled."""

    name: str
    p_value: bool
    op: Literal["<", "<=", ">=", ">"]  # drift when ``score <op> threshold``
    sampling: Sampling

    def verdict(self, score: float, threshold: float) -> bool:
        """Drifted, as Evidently itself would say for this score and threshold."""
        return bool(_COMPARE[self.op](score, threshold))


_TABLE = (
    # p-values: drift when the p-value is below (or at) the threshold
    StatTestKind("ks", True, "<=", "two_sample"),
    StatTestKind("cramer_von_mises", True, "<=", "two_sample"),
    StatTestKind("anderson", True, "<", "two_sample"),
    StatTestKind("mannw", True, "<", "two_sample"),
    StatTestKind("t_test", True, "<", "two_sample"),
    StatTestKind("es", True, "<", "two_sample"),
    StatTestKind("empirical_mmd", True, "<", "two_sample"),
    StatTestKind("z", True, "<", "two_sample"),
    StatTestKind("fisher_exact", True, "<", "two_sample"),
    StatTestKind("TVD", True, "<", "two_sample"),
    StatTestKind("chisquare", True, "<", "exact"),
    StatTestKind("g_test", True, "<", "exact"),
    # distances / divergences: drift when the score is at (or above) the threshold
    StatTestKind("wasserstein", False, ">=", "distance"),
    StatTestKind("jensenshannon", False, ">=", "distance"),
    StatTestKind("psi", False, ">=", "distance"),
    StatTestKind("kl_div", False, ">=", "distance"),
    StatTestKind("hellinger", False, ">=", "distance"),
    StatTestKind("ed", False, ">", "distance"),
)
STAT_TESTS: dict[str, StatTestKind] = {k.name: k for k in _TABLE}


def stat_test_kind(name: str) -> StatTestKind:
    """The kind of a supported test; ``KeyError`` with the supported names otherwise."""
    try:
        return STAT_TESTS[name]
    except KeyError:
        raise KeyError(
            f"unsupported drift method {name!r} (supported: {', '.join(sorted(STAT_TESTS))})"
        ) from None
