"""The policy loader: good files load, bad keys and values are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlflow_finops import PolicyError, PriceCatalog, load_policy
from mlflow_finops.cost.tracker import resolve_prices


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "finops.toml"
    p.write_text(text)
    return p


def test_valid_policy_loads_prices_and_tags(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
[prices]
profile = "on-prem-2026"
cpu_core_hour_usd = 0.05
market = "spot"
[prices.gpu_hour_usd_by_model]
H100 = 2.25
[tags]
team = "fraud"
cost_center = "cc-42"
[tags.extra]
project = "churn"
""",
    )
    policy = load_policy(p)
    assert policy.prices.cpu_core_hour_usd == 0.05
    assert policy.prices.gpu_hour_price("NVIDIA H100 80GB HBM3") == 2.25
    assert policy.prices.gpu_hour_price("Tesla T4") == 0.95
    assert policy.tags.resolve({}) == {
        "finops.team": "fraud",
        "finops.cost_center": "cc-42",
        "finops.project": "churn",
    }


def test_no_policy_file_gives_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    policy = load_policy()
    assert policy.prices == PriceCatalog()
    assert policy.prices.cpu_core_hour_usd == 0.031611


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[prices]\ncpu_core_hour_usd = -1\n", "[prices].cpu_core_hour_usd: Input should be greater than or equal to 0 (got -1)"),
        ("[prices]\ncpu_core_hour = 0.1\n", "[prices].cpu_core_hour: unknown key (expected one of: profile, cpu_core_hour_usd"),
        ("[prices]\nmarket = \"reserved\"\n", "[prices].market: Input should be 'on_demand' or 'spot' (got 'reserved')"),
        ("[tags]\ntema = \"x\"\n", "[tags].tema: unknown key (expected one of: team, cost_center, workload, model, extra)"),
        ("[pricez]\n", "[pricez]: unknown key (expected one of: prices, tags"),
        ("[prices\n", "not valid TOML"),
        ("[prices]\ncpu_core_hour_usd = \"cheap\"\n", "[prices].cpu_core_hour_usd: Input should be a valid number"),
        ("[models.m.retrain]\nmemory = \"recent\"\n",
         "[models].m.retrain.memory: Input should be 'adaptive' or 'all' (got 'recent')"),
    ],
)
def test_bad_policy_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(PolicyError) as err:
        load_policy(p)
    assert expected in str(err.value)
    assert str(p) in str(err.value)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="file not found"):
        load_policy(tmp_path / "nope.toml")


def test_precedence_file_then_env_then_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write(tmp_path, "[prices]\ncpu_core_hour_usd = 0.05\nram_gb_hour_usd = 0.01\nprofile = 'file'\n")
    monkeypatch.setenv("MLFLOW_FINOPS_POLICY", str(p))
    assert resolve_prices().cpu_core_hour_usd == 0.05
    monkeypatch.setenv("MLFLOW_FINOPS_CPU_CORE_HOUR_USD", "0.07")
    monkeypatch.setenv("MLFLOW_FINOPS_PRICE_PROFILE", "env")
    catalog = resolve_prices()
    assert (catalog.cpu_core_hour_usd, catalog.ram_gb_hour_usd, catalog.profile) == (0.07, 0.01, "env")
    catalog = resolve_prices({"cpu_core_hour_usd": 0.09})
    assert (catalog.cpu_core_hour_usd, catalog.ram_gb_hour_usd, catalog.profile) == (0.09, 0.01, "env")


def test_bad_env_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_FINOPS_RAM_GB_HOUR_USD", "lots")
    with pytest.raises(ValueError, match="MLFLOW_FINOPS_RAM_GB_HOUR_USD: ram_gb_hour_usd: Input should be a valid number"):
        resolve_prices()


def test_bad_argument_names_the_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"autolog\(prices=...\): unknown price key 'cpu'"):
        resolve_prices({"cpu": 1})


@pytest.mark.parametrize(
    "text, expected",
    [
        # inf is accepted by a plain `ge=0`; no price, duration or count may be infinite
        ("[prices]\ncpu_core_hour_usd = inf\n", "[prices].cpu_core_hour_usd: Input should be a finite number"),
        ("[prices]\ncpu_core_hour_usd = nan\n", "[prices].cpu_core_hour_usd: Input should be a finite number"),
        ("[budgets.b]\namount_usd = inf\nteam = \"t\"\n", "[budgets].b.amount_usd: Input should be a finite number"),
        ("[drift]\npersistence_n = 1000000000000\n", "[drift].persistence_n: Input should be less than or equal to 1000"),
        ("[drift]\ncooldown_hours = 1e300\n", "[drift].cooldown_hours: Input should be less than or equal to 8784"),
        ("[retrain]\ndeadline_hours = 1e300\n", "[retrain].deadline_hours: Input should be less than or equal to 8784"),
        ("[retrain]\nbackoff_s = 1e300\n", "[retrain].backoff_s: Input should be less than or equal to 31622400"),
        ("[retrain]\nmax_job_minutes = inf\n", "[retrain].max_job_minutes: Input should be a finite number"),
        ("[retrain]\nmax_attempts = 5000\n", "[retrain].max_attempts: Input should be less than or equal to 1000"),
        ("[windows]\nmax_wait_hours = 1e12\n", "[windows].max_wait_hours: Input should be less than or equal to 8784"),
        # a Ray node's prices are a [prices] table: validated the same way, named by its place
        ("[[ray.node_prices]]\nlabels = {market = \"spot\"}\nprices = {cpu_core_hour_usd = -0.01}\n",
         "[ray].node_prices.0.prices: Value error, cpu_core_hour_usd: Input should be greater than or equal to 0"),
        ("[[ray.node_prices]]\nlabels = {market = \"spot\"}\nprices = {gpu_hour_usd = inf}\n",
         "[ray].node_prices.0.prices: Value error, gpu_hour_usd: Input should be a finite number"),
    ],
)
def test_unbounded_or_infinite_numbers_are_named(tmp_path: Path, text: str, expected: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(PolicyError) as err:
        load_policy(p)
    assert expected in str(err.value)


def test_bounds_admit_real_policies(tmp_path: Path) -> None:
    """A year-long deadline, 1000 attempts and a week-long job are still accepted."""
    p = write(tmp_path, "[retrain]\ndeadline_hours = 8784\nmax_attempts = 1000\nmax_job_minutes = 10080\n"
                        "[drift]\npersistence_n = 1000\npersistence_k = 1000\n")
    policy = load_policy(p)
    assert (policy.retrain.deadline_hours, policy.retrain.max_attempts, policy.drift.persistence_n) == (8784, 1000, 1000)


def test_lookups_name_the_model_and_resolve_paths_from_the_policy_file(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf").mkdir()
    p = tmp_path / "conf" / "team.toml"
    p.write_text('[models.churn]\nreference = "data/ref.csv"\n[models.fraud]\nreference = "/abs/ref.csv"\n'
                 '[models.bare]\ncurrent = "new/"\n')
    monkeypatch.chdir(tmp_path)
    policy = load_policy(p)
    assert policy.model("churn").reference == "data/ref.csv"
    assert policy.reference("churn") == str(tmp_path / "conf" / "data" / "ref.csv")
    assert policy.reference("fraud") == "/abs/ref.csv"
    assert policy.path("~/x.csv") == str(Path.home() / "x.csv")
    with pytest.raises(PolicyError, match=r"\[models.spam\]: unknown model \(models in this policy: bare, churn, fraud\)"):
        policy.model("spam")
    with pytest.raises(PolicyError, match=r"\[models.bare\].reference: not set"):
        policy.reference("bare")
    # a policy not read from a file: relative paths stay relative to the working folder
    assert load_policy(None).path("data/ref.csv") == "data/ref.csv"


def test_a_models_section_overrides_only_the_keys_it_sets(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, "[retrain]\nmargin = 0.02\nmetric = \"f1\"\n"
                                         "[models.m.retrain]\nmargin = 0.05\n[models.m.trigger]\nhistory = 9\n"))
    mp = policy.model("m")
    merged = policy.retrain.merged(mp.retrain)
    assert (merged.margin, merged.metric) == (0.05, "f1")
    assert policy.trigger.merged(mp.trigger).history == 9
    assert policy.drift.merged(None) is policy.drift
