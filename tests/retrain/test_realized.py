"""What a promoted retrain realized on the next labelled window, and when it is rolled back (pure)."""

from __future__ import annotations

import pytest

from mlflow_finops.retrain.realized import verify


@pytest.mark.parametrize(
    "metric, champion, replaced, tolerated, realized, rollback",
    [
        ("accuracy", 0.85, 0.80, 0.01, 0.05, False),  # the retrain realized 5 pt
        ("accuracy", 0.80, 0.80, 0.01, 0.0, False),  # it realized nothing: kept, nothing to undo
        ("accuracy", 0.795, 0.80, 0.01, -0.005, False),  # a loss within the tolerated one: noise, kept
        ("accuracy", 0.79, 0.80, 0.01, -0.01, False),  # exactly the tolerated loss: kept
        ("accuracy", 0.70, 0.80, 0.01, -0.10, True),  # the replaced version is 10 pt better: rolled back
        ("accuracy", 0.70, 0.80, 0.20, -0.10, False),  # ... unless the policy tolerates that
        ("rmse", 1.0, 1.5, 0.1, 0.5, False),  # lower is better: the new version realized 0.5
        ("rmse", 1.5, 1.0, 0.1, -0.5, True),
    ],
)
def test_a_promotion_is_verified_on_the_next_window(metric, champion, replaced, tolerated, realized, rollback) -> None:
    v = verify(metric, champion, replaced, tolerated, champion_version="4", replaced_version="3")
    assert v.realized == pytest.approx(realized) and v.rollback is rollback
    assert f"realized {realized * 100:+.1f} pt" in v.reason
    assert ("rolled back to v3" in v.reason) is rollback
