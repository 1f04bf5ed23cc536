"""When a challenger replaces the champion: a pure rule, shared by every way a retrain runs.

The challenger is promoted only when it beats the champion on the same held-out
rows by more than the policy's margin, in the metric's own direction
(:func:`mlflow_finops.scoring.gain`). A challenger that is worse, or better by
no more than the margin, leaves ``@champion`` where it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..scoring import gain

__all__ = ["Evaluation"]


@dataclass(frozen=True)
class Evaluation:
    """Champion and challenger scored on the held-out newest rows."""

    metric: str
    champion: float
    challenger: float
    margin: float

    @property
    def gain(self) -> float:
        """What the challenger buys over the champion, positive = better, in the metric's units."""
        return gain(self.metric, self.challenger, self.champion)

    @property
    def better(self) -> bool:
        """The challenger beats the champion by more than the margin (in the metric's direction)."""
        return self.gain > self.margin
