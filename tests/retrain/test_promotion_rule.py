"""Promotion's rule on given scores (pure; the job's verdict on a real registry is in test_promotion.py)."""

from __future__ import annotations

import pytest

from mlflow_finops.retrain.promotion import Evaluation

CASES = [
    # id, metric, champion, challenger, margin, gain, better
    ("higher accuracy by more than the margin", "accuracy", 0.80, 0.90, 0.05, 0.10, True),
    ("higher accuracy by less than the margin", "accuracy", 0.80, 0.83, 0.05, 0.03, False),
    ("higher accuracy by exactly the margin", "accuracy", 0.5, 0.75, 0.25, 0.25, False),
    ("lower accuracy", "accuracy", 0.80, 0.70, 0.0, -0.10, False),
    ("equal, no margin", "accuracy", 0.80, 0.80, 0.0, 0.0, False),
    ("lower rmse by more than the margin", "rmse", 2.0, 1.0, 0.5, 1.0, True),
    ("lower rmse by exactly the margin", "rmse", 2.0, 1.5, 0.5, 0.5, False),
    ("higher rmse", "rmse", 1.0, 2.0, 0.0, -1.0, False),
]


@pytest.mark.parametrize("metric, champion, challenger, margin, gain, better", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_gain_is_in_the_metrics_direction_and_better_means_beyond_the_margin(
    metric: str, champion: float, challenger: float, margin: float, gain: float, better: bool
) -> None:
    ev = Evaluation(metric=metric, champion=champion, challenger=challenger, margin=margin)
    assert ev.gain == pytest.approx(gain)
    assert ev.better is better


def test_an_evaluation_is_a_value() -> None:
    ev = Evaluation("rmse", 2.0, 1.0, 0.5)
    assert ev == Evaluation("rmse", 2.0, 1.0, 0.5)
    with pytest.raises(AttributeError):
        ev.margin = 0.0  # type: ignore[misc]
