"""Process-tree attribution against the kernel's own accounting (no psutil mocking)."""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from mlflow_finops.cost.process import (
    ProcessTreeSampler,
    TreeReading,
    allocated_cpus,
    allocated_ram_gb,
    machine_info,
)
from mlflow_finops.cost.samplers import GB, RunUsage
from mlflow_finops.names import TAG_MACHINE_GPU_COUNT, TAG_MACHINE_GPU_MODELS

from support.process_tree import MiB, ProcessTree

from .nvml_support import gpu_models_tag, nvml_gpu_models


def burn(seconds: float) -> float:
    """Spin for ``seconds`` of this process's CPU time."""
    end = time.process_time() + seconds
    x = 0
    while time.process_time() < end:
        x += 1
    return time.process_time()


def os_tree_cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def test_children_that_exit_between_samples_are_counted() -> None:
    sampler = ProcessTreeSampler()
    before, os_before = sampler.read(), os_tree_cpu()
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        pool.map(burn, [0.6, 0.6])
        pool.close()
        pool.join()  # workers gone and reaped before the next sample
    after, os_after = sampler.read(), os_tree_cpu()
    attributed = after.cpu_s - before.cpu_s
    assert attributed >= 1.2
    assert attributed == pytest.approx(os_after - os_before, rel=0.02, abs=0.02)


CHILD = textwrap.dedent(
    """
    import os, sys, time
    def burn(s):
        end = time.process_time() + s
        while time.process_time() < end: pass
    pid = os.fork()
    if pid == 0:          # a grandchild that burns and exits (reaped by the child)
        burn(0.5); os._exit(0)
    burn(0.5)
    os.waitpid(pid, 0)
    live = os.fork()
    if live == 0:         # a grandchild still alive when the sample is taken
        burn(0.4); print("grandchild-done", flush=True); time.sleep(30); os._exit(0)
    time.sleep(0.8)
    print("ready", flush=True)
    sys.stdin.read()
    os.kill(live, 9); os.waitpid(live, 0)   # reaped, so the kernel's count includes it
    """
)


def test_tree_of_another_process_excludes_a_busy_neighbour() -> None:
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        sampler = ProcessTreeSampler(child.pid)
        first = sampler.read()
        assert child.stdout is not None
        lines = [child.stdout.readline().strip(), child.stdout.readline().strip()]
        assert sorted(lines) == ["grandchild-done", "ready"]
        reading = sampler.read()
        assert neighbour.pid not in reading.pids
        assert len(reading.pids) == 2  # the child and its live grandchild
        attributed = reading.cpu_s
        # the OS's accounting: everything the child and its reaped descendants used
        child.stdin.close()  # type: ignore[union-attr]
        _, _, ru = os.wait4(child.pid, 0)
        os_total = ru.ru_utime + ru.ru_stime
    finally:
        neighbour.kill()
        neighbour.wait()
        child.kill()
    assert first.cpu_s < 0.5
    assert attributed >= 1.3
    # wait4 also counts the interpreter's exit after the reading, hence abs slack
    assert attributed == pytest.approx(os_total, abs=0.08)


def test_rss_and_machine_description() -> None:
    reading = ProcessTreeSampler().read()
    assert reading.rss_bytes > 10 * 1024**2
    info = machine_info()
    assert info.cpu_cores == os.cpu_count()
    assert info.ram_gb > 0.5
    assert info.gpu_models == nvml_gpu_models()  # () on a machine without a GPU
    assert info.tags()[TAG_MACHINE_GPU_MODELS] == gpu_models_tag()
    assert info.tags()[TAG_MACHINE_GPU_COUNT] == str(len(nvml_gpu_models()))
    assert 0 < allocated_cpus() <= os.cpu_count()  # type: ignore[operator]
    assert 0 < allocated_ram_gb() <= info.ram_gb + 1e-6


def reading(t: float, cpu_s: float, rss_gb: float) -> TreeReading:
    return TreeReading(timestamp=t, cpu_s=cpu_s, rss_bytes=int(rss_gb * GB), pids=frozenset({os.getpid()}))


def test_folding_charges_cpu_from_the_first_reading_and_never_less_than_before() -> None:
    sampler, usage = ProcessTreeSampler(), RunUsage()
    sampler.fold(reading(100.0, 40.0, 1.0), usage)  # 40 s spent before the run: not its cost
    assert usage.local.cpu_s == 0.0
    sampler.fold(reading(110.0, 46.0, 1.0), usage)
    sampler.fold(reading(111.0, 45.5, 1.0), usage)  # a member vanished between reads
    assert usage.local.cpu_s == pytest.approx(6.0)
    assert usage.local.ram_gb_s == pytest.approx(11.0)
    assert usage.nodes == {}


def test_folding_from_the_process_start_charges_its_start_up() -> None:
    sampler, usage = ProcessTreeSampler(), RunUsage()
    sampler.charge_from(90.0, usage)  # the process started 10 s before the first reading
    sampler.fold(reading(100.0, 4.0, 2.0), usage)
    assert usage.local.cpu_s == pytest.approx(4.0)
    assert usage.local.ram_gb_s == pytest.approx(0.5 * 2.0 * 10)  # from nothing up to 2 GB


def test_an_unreadable_member_counts_once_reaped_and_is_reported_while_alive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """AccessDenied injected for the children (psutil itself is real)."""
    import mlflow_finops.cost.process as process

    real_read_member = process._read_member
    sampler = ProcessTreeSampler()
    before = sampler.read()
    burner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.process_time() + 0.5\n"
                               "while time.process_time() < end: pass"])
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    denied = {burner.pid, sleeper.pid}

    def read_member(proc: psutil.Process):
        if proc.pid in denied:
            raise psutil.AccessDenied(proc.pid)
        return real_read_member(proc)

    monkeypatch.setattr(process, "_read_member", read_member)
    try:
        live = sampler.read()
        assert live.unreadable == frozenset(denied)
        burner.wait()  # reaped by this process: its CPU is in our RUSAGE_CHILDREN now
        after = sampler.read()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert after.unreadable == {sleeper.pid}
    assert after.cpu_s - before.cpu_s >= 0.5
    assert sampler.unaccounted_pids == [sleeper.pid]
    summary = sampler.close(RunUsage())
    assert summary.tags["finops.unaccounted_processes"] == "1"
    assert summary.lost


# ------------------------------------------------- a tree of known memory and CPU
# A root and three children, each told what to allocate and burn (tests/support/process_tree.py);
# the sampler's figures are checked against each member read on its own and the kernel's count.


def test_a_trees_memory_is_the_sum_of_its_members() -> None:
    with ProcessTree() as tree:
        kids = [tree.spawn() for _ in range(3)]
        sampler = ProcessTreeSampler(tree.pid)
        idle = sampler.read()
        assert idle.pids == {tree.pid, *kids}
        for pid, mib in zip(kids, (30, 60, 90)):
            assert tree.tell(pid, f"grow {mib}") == "ok"
        busy = sampler.read()
        members = tree.rss(busy.pids)
    assert busy.pids == idle.pids
    assert busy.rss_bytes == pytest.approx(members, rel=0.01)
    # what the children allocated, all of it, on top of four idle interpreters
    assert busy.rss_bytes - idle.rss_bytes == pytest.approx(180 * MiB, rel=0.05)


def test_the_peak_is_the_peak_of_the_sum_not_the_sum_of_each_members_peak() -> None:
    with ProcessTree() as tree:
        a, b = tree.spawn(), tree.spawn()
        sampler, usage = ProcessTreeSampler(tree.pid), RunUsage()
        readings = [sampler.read()]
        for cmd in ((a, "grow 80"), (a, "free"), (b, "grow 80"), (b, "free")):
            assert tree.tell(*cmd) == "ok"
            if cmd[1] != "free" or cmd[0] == a:
                readings.append(sampler.read())
        readings.append(sampler.read())
        for r in readings:
            sampler.fold(r, usage)
    idle = readings[0].rss_bytes
    top = max(r.rss_bytes for r in readings)
    assert usage.local.peak_rss_bytes == top
    assert top - idle == pytest.approx(80 * MiB, rel=0.1)  # one member at a time held 80 MiB, never both
    trapezoid = sum(0.5 * (p.rss_bytes + q.rss_bytes) * (q.timestamp - p.timestamp)
                    for p, q in zip(readings, readings[1:])) / GB
    assert usage.local.ram_gb_s == pytest.approx(trapezoid, rel=1e-9)


def test_cpu_of_a_reaped_child_is_counted_once_and_an_orphans_is_kept() -> None:
    with ProcessTree() as tree:
        reaped, orphaning = tree.spawn(), tree.spawn()
        orphan = tree.spawn(orphaning)  # a grandchild
        sampler = ProcessTreeSampler(tree.pid)
        first = sampler.read()
        assert first.pids == {tree.pid, reaped, orphaning, orphan}
        for pid in (reaped, orphan):
            assert tree.tell(pid, "burn 0.3") == "ok"
        live = sampler.read()  # the burners' CPU, read in the living members
        orphan_cpu = sum(psutil.Process(orphan).cpu_times()[:2])
        tree.reap(reaped)  # now in the root's children counters
        after_reap = sampler.read()
        # its parent leaves without waiting for it: re-parented out of the tree, its CPU in no member's count
        assert tree.tell(orphaning, "exit") == "gone"
        tree.reap(orphaning)
        tree.parent_of.pop(orphan)
        gone = sampler.read()
        assert gone.pids == {tree.pid}
        os_total = tree.close()
    assert live.cpu_s - first.cpu_s >= 0.6
    assert after_reap.cpu_s == pytest.approx(live.cpu_s, abs=0.03)  # moved, not added again, not lost
    assert gone.cpu_s == pytest.approx(after_reap.cpu_s, abs=0.03)
    # the kernel's count of the root and what it reaped, plus the orphan's last reading
    assert gone.cpu_s == pytest.approx(os_total + orphan_cpu, abs=0.05)
    assert sampler.unaccounted_pids == [] and sampler.close(RunUsage()).lost == ""
