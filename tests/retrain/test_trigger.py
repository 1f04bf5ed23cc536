"""The retrain trigger's economics (pure) and its history read from a real MLflow store."""

from __future__ import annotations

import pytest

from mlflow_finops.policy import TriggerPolicy
from mlflow_finops.retrain.trigger import PastRetrain, still_buying, weigh

SIGNAL = "accuracy -3.0 pt since promotion of v2 (0.9000 -> 0.8700; beyond the tolerated 1.0 pt)"


def test_first_retrain_with_a_loss_goes_ahead_and_says_the_cost_is_unknown() -> None:
    v = weigh(TriggerPolicy(), signal=SIGNAL, loss=0.03, history=[])
    assert v.retrain and v.expected_gain == pytest.approx(0.03) and v.expected_cost_usd is None
    assert v.expected_value_usd == pytest.approx(0.0003)  # 3 pt x $0.0001 (the default value of a point)
    assert v.reason == f"{SIGNAL}; expected gain 3.0 pt worth $0.00030; cost not known before the first retrain: retrain"


def test_gain_worth_less_than_cost_skips_with_the_numbers() -> None:
    history = [PastRetrain(0.001, 0.004), PastRetrain(0.0, 0.004)]
    v = weigh(TriggerPolicy(value_per_point_usd=0.01), signal=SIGNAL, loss=0.005, history=history)
    # (0.001 + 0 + 0.005) / 3 = 0.002 -> 0.2 pt x $0.01 = $0.002 < $0.004
    assert not v.retrain and v.decision == "skip"
    assert v.expected_gain == pytest.approx(0.002) and v.expected_cost_usd == pytest.approx(0.004)
    assert v.reason == (f"{SIGNAL}; expected gain 0.2 pt worth $0.0020 < expected cost $0.0040 "
                        "(last 2 retrains): skip")


def test_gain_worth_the_cost_retrains() -> None:
    v = weigh(TriggerPolicy(value_per_point_usd=0.01), signal=SIGNAL, loss=0.03,
              history=[PastRetrain(0.02, 0.0002)])
    assert v.retrain and v.expected_gain == pytest.approx(0.025)
    assert "expected gain 2.5 pt worth $0.025 >= expected cost $0.00020 (last 1 retrain): retrain" in v.reason


def test_equal_value_and_cost_retrains() -> None:
    v = weigh(TriggerPolicy(value_per_point_usd=1.0), signal=SIGNAL, loss=None, history=[PastRetrain(0.01, 1.0)])
    assert v.retrain and v.expected_value_usd == pytest.approx(1.0)


def test_retrains_that_bought_nothing_stop_drift_only_retrains() -> None:
    v = weigh(TriggerPolicy(), signal="12 of 27 columns drifted", loss=None,
              history=[PastRetrain(0.0, 0.001)] * 3)
    assert not v.retrain and v.expected_gain == 0
    assert v.reason.endswith("expected gain 0.0 pt (last 3 retrains bought nothing): skip")


def test_no_labels_and_no_history_leaves_it_to_drift() -> None:
    v = weigh(TriggerPolicy(), signal="12 of 27 columns drifted", loss=None, history=[])
    assert v.retrain and v.expected_gain is None
    assert v.reason == "12 of 27 columns drifted; no labels and no retrain history to weigh: drift decides: retrain"


def test_history_is_limited_to_the_newest_n() -> None:
    history = [PastRetrain(0.0, 1.0)] * 2 + [PastRetrain(0.5, 0.0)] * 5
    v = weigh(TriggerPolicy(history=2), signal=SIGNAL, loss=0.0, history=history)
    assert v.history == 2 and v.expected_gain == 0 and not v.retrain


def test_a_measured_gain_outweighs_an_earlier_fruitless_retrain() -> None:
    """The loss measured now pulls the expectation up: a useless past does not block a real loss forever."""
    v = weigh(TriggerPolicy(value_per_point_usd=0.01), signal=SIGNAL, loss=0.2, history=[PastRetrain(0.0, 0.01)])
    assert v.retrain and v.expected_gain == pytest.approx(0.1)


def test_prior_cost_from_the_policy_before_the_first_retrain() -> None:
    v = weigh(TriggerPolicy(value_per_point_usd=0.001), signal=SIGNAL, loss=0.01, history=[], prior_cost_usd=0.5)
    assert not v.retrain and v.expected_cost_usd == 0.5
    assert "expected gain 1.0 pt worth $0.0010 < expected cost $0.50 (no retrain yet): skip" in v.reason


@pytest.mark.parametrize(
    "history, loss, follow, why",
    [
        ([PastRetrain(0.05, 0.001)], -0.02, True,
         "the last retrain bought 5.0 pt, more than the tolerated 1.0 pt: the data may still be moving"),
        ([PastRetrain(0.01, 0.001)], 0.0, True, None),  # bought exactly the tolerated loss: the streak ends
        ([PastRetrain(0.0, 0.001), PastRetrain(0.3, 0.001)], 0.0, True, None),  # only the newest counts
        ([PastRetrain(0.05, 0.001)], None, True, None),  # no labels scored: drift's business, not this
        ([], 0.0, True, None),
        ([PastRetrain(0.05, 0.001)], 0.0, False, None),  # follow_gains = false
    ],
)
def test_a_retrain_that_bought_more_than_the_tolerated_loss_is_followed(history, loss, follow, why) -> None:
    assert still_buying(TriggerPolicy(follow_gains=follow), history, loss) == why


def test_a_followed_retrain_is_weighed_like_any_other() -> None:
    """The champion is 2 pt above its baseline (loss -0.02 counts as 0): the expectation is the history's."""
    history = [PastRetrain(0.05, 0.0001), PastRetrain(0.01, 0.0001)]
    why = still_buying(TriggerPolicy(), history, -0.02)
    v = weigh(TriggerPolicy(), signal=f"accuracy +2.0 pt since promotion of v3; {why}", loss=-0.02, history=history)
    assert v.retrain and v.expected_gain == pytest.approx(0.02)  # (0.05 + 0.01 + 0) / 3
    cheap = weigh(TriggerPolicy(value_per_point_usd=0.000001), signal=why, loss=-0.02, history=history)
    assert not cheap.retrain  # worth $0.000002 < $0.0001: the economics still decide


def test_without_labels_the_expectation_is_the_mean_of_what_past_retrains_bought() -> None:
    v = weigh(TriggerPolicy(), signal="drifted", loss=None, history=[PastRetrain(0.02, 0.001), PastRetrain(0.04, 0.001)])
    assert v.expected_gain == pytest.approx(0.03) and v.loss is None and v.history == 2


def test_the_verdict_carries_the_measured_loss_and_a_plain_boolean() -> None:
    v = weigh(TriggerPolicy(), signal=SIGNAL, loss=-0.01, history=[PastRetrain(0.0, 0.001)])
    assert v.loss == -0.01 and v.retrain is False and v.decision == "skip"


def test_equal_value_and_cost_say_so() -> None:
    v = weigh(TriggerPolicy(value_per_point_usd=1.0), signal=SIGNAL, loss=None, history=[PastRetrain(0.01, 1.0)])
    assert v.retrain is True
    assert v.reason == f"{SIGNAL}; expected gain 1.0 pt worth $1.00 >= expected cost $1.00 (last 1 retrain): retrain"


@pytest.mark.parametrize(
    "history, loss, retrain, gain, learned",
    [
        # three retrains that bought 10 pt each on held-out rows of their own window, none realized yet
        ([PastRetrain(0.10, 0.0005, realized=False)] * 3, 0.06, True, 0.09,
         "(last 3 retrains, 3 not realized yet: in-window gain): retrain"),
        # the same retrains, each realized nothing on the next window: the loss alone, over 4, is not worth it
        ([PastRetrain(0.0, 0.0005)] * 3, 0.06, False, 0.015, "(last 3 retrains): skip"),
        # they realized a loss: it counts against the next one
        ([PastRetrain(-0.02, 0.0005)] * 3, 0.06, False, 0.0, "(last 3 retrains bought nothing): skip"),
        # they realized 4 pt each: worth it
        ([PastRetrain(0.04, 0.0005)] * 3, 0.06, True, 0.045, "(last 3 retrains): retrain"),
        # the newest not realized yet (its next window unlabelled), the older ones realized nothing
        ([PastRetrain(0.10, 0.0005, realized=False), PastRetrain(0.0, 0.0005), PastRetrain(0.0, 0.0005)], 0.06,
         True, 0.04, "(last 3 retrains, 1 not realized yet: in-window gain): retrain"),
    ],
)
def test_the_expected_gain_is_learned_from_realized_gains(history, loss, retrain, gain, learned) -> None:
    v = weigh(TriggerPolicy(value_per_point_usd=0.0002), signal=SIGNAL, loss=loss, history=history)
    assert v.retrain is retrain and v.expected_gain == pytest.approx(gain, abs=1e-12)
    assert v.reason.endswith(learned), v.reason


def test_a_retrain_that_realized_little_ends_the_streak_it_started() -> None:
    assert still_buying(TriggerPolicy(), [PastRetrain(0.003, 0.001)], 0.0) is None
    assert still_buying(TriggerPolicy(), [PastRetrain(-0.05, 0.001)], 0.0) is None


@pytest.mark.parametrize(
    "keys, point_usd",
    [
        ({}, 0.0001),  # the default: $0.001 a point on 1,000 predictions, 100 predictions a day, one day
        ({"value_per_1000_predictions_usd": 0.05, "predictions_per_day": 20_000}, 1.0),
        ({"value_per_1000_predictions_usd": 0.05, "predictions_per_day": 20_000, "horizon_days": 7}, 7.0),
        ({"value_per_point_usd": 0.01, "predictions_per_day": 20_000}, 0.01),  # the override wins
    ],
)
def test_the_value_of_a_point_is_derived_from_what_the_user_states(keys, point_usd) -> None:
    assert TriggerPolicy(**keys).point_value_usd() == pytest.approx(point_usd)


def test_a_models_stated_value_is_not_hidden_by_the_top_levels_override() -> None:
    top = TriggerPolicy(value_per_point_usd=0.01)
    model = TriggerPolicy(predictions_per_day=1_000_000)
    assert top.merged(model).point_value_usd() == pytest.approx(0.001 * 1000)
    assert top.merged(TriggerPolicy(history=3)).point_value_usd() == pytest.approx(0.01)


def test_at_the_default_value_a_retrain_must_be_expected_to_buy_about_half_a_point() -> None:
    """The cost side binds at the default: a retrain of $0.00005 (a few CPU-seconds) needs 0.5 pt."""
    past = [PastRetrain(0.003, 0.00005)] * 4  # realized 0.3 pt each
    assert not weigh(TriggerPolicy(), signal=SIGNAL, loss=0.011, history=past).retrain  # 0.46 pt: $0.000046
    assert weigh(TriggerPolicy(), signal=SIGNAL, loss=0.02, history=past).retrain  # 0.64 pt: $0.000064
