"""The NVML code path, with a fake at the NVML boundary only (the test machines may have no GPU)."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from mlflow_finops.pricing import PriceCatalog
from mlflow_finops.cost.tracker import CostTracker
from mlflow_finops.cost.gpu import GpuSampler


class FakeNvml:
    """Just the pynvml functions we call: two GPUs, the run holds a context on the first."""

    class NVMLError(Exception):
        pass

    def __init__(self, energy_counter: bool = True, watts: float = 300.0):
        self.t0 = time.time()
        self.energy_counter = energy_counter
        self.watts = watts
        self.devices = [
            {"name": b"NVIDIA H100 80GB HBM3", "pids": [os.getpid()], "mem": 2 * 1024**3},
            {"name": "NVIDIA A10G", "pids": [999_999], "mem": 1024**3},
        ]

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> bytes | str:
        return self.devices[h]["name"]

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=p, usedGpuMemory=self.devices[h]["mem"]) for p in self.devices[h]["pids"]]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: int) -> list[SimpleNamespace]:
        return []

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        if not self.energy_counter:
            raise self.NVMLError("Not Supported")
        return int((time.time() - self.t0) * self.watts * 1000)  # millijoules

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return int(self.watts * 1000)  # milliwatts

    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=87, memory=40)


def test_no_nvml_means_zero_gpus_and_no_failure() -> None:
    class Broken:
        def nvmlInit(self) -> None:
            raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    sampler = GpuSampler(Broken())
    assert not sampler.available
    assert sampler.read([os.getpid()]) == []
    assert GpuSampler().read([os.getpid()]) == []  # the real library: this process holds no GPU


def test_only_devices_the_process_tree_holds_are_read() -> None:
    readings = GpuSampler(FakeNvml()).read([os.getpid()])
    assert [(r.index, r.name, r.memory_bytes, r.utilization_pct) for r in readings] == [
        (0, "NVIDIA H100 80GB HBM3", 2 * 1024**3, 87.0)
    ]


@pytest.mark.parametrize("energy_counter", [True, False], ids=["energy-counter", "power-x-time"])
def test_gpu_hours_energy_and_cost(sqlite_uri: str, energy_counter: bool) -> None:
    run = MlflowClient().create_run(MlflowClient().get_experiment_by_name("Default").experiment_id)
    prices = PriceCatalog(gpu_hour_usd_by_model={"H100": 2.0}, cpu_watts_per_core=0, ram_watts_per_gb=0, pue=1.0)
    tracker = CostTracker(
        run.info.run_id, interval_s=0.1, prices=prices, gpu=GpuSampler(FakeNvml(energy_counter, watts=300.0))
    ).start()
    time.sleep(1.0)
    b = tracker.stop()
    assert tracker.allocation.gpus == 2
    wall_s = b.wall_hours * 3600
    gpu_s = b.gpu_hours * 3600
    assert gpu_s == pytest.approx(wall_s, abs=0.15)  # one GPU held for the whole run
    assert b.energy_kwh * 3.6e6 == pytest.approx(300.0 * gpu_s, rel=0.1, abs=30)
    assert b.usage_cost_usd >= b.gpu_hours * 2.0
    m = MlflowClient().get_run(run.info.run_id).data.metrics
    assert m["finops/gpu_hours"] == pytest.approx(b.gpu_hours)
    assert m["finops/gpu_peak_memory_gb"] == pytest.approx(2.0)
