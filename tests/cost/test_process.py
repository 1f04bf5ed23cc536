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
    is_ray_component,
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
    # both burners: 0.6 CPU-s by their own clocks, which the kernel's per-process counters show in
    # 10 ms ticks (seen 0.59 here); one burner alone would be 0.3
    assert live.cpu_s - first.cpu_s >= 0.6 - 2 * 0.02
    assert after_reap.cpu_s == pytest.approx(live.cpu_s, abs=0.03)  # moved, not added again, not lost
    assert gone.cpu_s == pytest.approx(after_reap.cpu_s, abs=0.03)
    # the kernel's count of the root and what it reaped, plus the orphan's last reading
    assert gone.cpu_s == pytest.approx(os_total + orphan_cpu, abs=0.05)
    assert sampler.unaccounted_pids == [] and sampler.close(RunUsage()).lost == ""


# ------------------------------------------------- members left out, GPUs, what the run is told
def _titled(*titles: str) -> subprocess.Popen:
    """A shell whose children carry these titles (argv[0]), all sleeping; it waits for them."""
    script = " ".join(f'(exec -a "{t}" sleep 60) &' for t in titles) + " wait"
    shell = subprocess.Popen(["bash", "-c", script])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until every child has exec'd
        kids = psutil.Process(shell.pid).children()
        if len(kids) == len(titles) and all(k.cmdline()[:1] != ["bash"] for k in kids):
            break
        time.sleep(0.05)
    return shell


def _end(shell: subprocess.Popen) -> None:
    for k in psutil.Process(shell.pid).children():
        k.kill()
    shell.wait()


def test_rays_processes_are_left_out_of_the_tree_by_default() -> None:
    shell = _titled("ray::IDLE", "train-worker")
    try:
        kids = {k.cmdline()[0]: k.pid for k in psutil.Process(shell.pid).children()}
        default = ProcessTreeSampler(shell.pid).read()
        everything = ProcessTreeSampler(shell.pid, exclude=None).read()
    finally:
        _end(shell)
    assert default.pids == {shell.pid, kids["train-worker"]}
    assert everything.pids == {shell.pid, *kids.values()}


def test_a_left_out_member_takes_its_subtree_and_is_judged_once() -> None:
    asked: list[int] = []
    with ProcessTree() as tree:
        keep, drop = tree.spawn(), tree.spawn()
        under_drop = tree.spawn(drop)

        def exclude(proc: psutil.Process) -> int:
            asked.append(proc.pid)
            return int(proc.pid == drop)  # any truthy value leaves it out

        sampler = ProcessTreeSampler(tree.pid, exclude=exclude)
        first, second = sampler.read(), sampler.read()
        for pid in (drop, under_drop):
            assert tree.tell(pid, "free") == "ok"  # alive all along
    assert first.pids == second.pids == {tree.pid, keep}
    assert sorted(asked) == sorted([keep, drop])  # once each; the subtree of drop is never walked


def test_is_ray_component_by_name_title_or_script() -> None:
    import shutil
    import tempfile

    folder = tempfile.mkdtemp()
    raylet = os.path.join(folder, "raylet")
    os.symlink(shutil.which("sleep"), raylet)
    sleep = "import time; time.sleep(60)"
    procs = {
        "name": subprocess.Popen([raylet, "60"]),
        "script": subprocess.Popen([sys.executable, "-c", sleep, "/x/site-packages/ray/_private/workers/w.py"]),
        "fifth": subprocess.Popen([sys.executable, "-c", sleep, "a", "/x/site-packages/ray/dashboard/agent.py"]),
        "plain": subprocess.Popen([sys.executable, "-c", sleep, "/x/site-packages/rayon/dashboard/x.py"]),
    }
    shell = _titled("ray::Trainer.fit")
    try:
        time.sleep(0.3)
        found = {k: is_ray_component(psutil.Process(p.pid)) for k, p in procs.items()}
        titled = is_ray_component(psutil.Process(shell.pid).children()[0])
        gone = psutil.Process(procs["plain"].pid)
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
        _end(shell)
        shutil.rmtree(folder)
    assert found == {"name": True, "script": True, "fifth": False, "plain": False}  # markers in argv[:4] only
    assert titled
    assert not is_ray_component(gone)  # a process gone by now: not Ray's, nothing raised


def test_the_gpus_the_tree_holds_are_read_with_it_and_folded() -> None:
    from mlflow_finops.cost.gpu import GpuSampler

    from .test_gpu import FakeNvml

    with ProcessTree() as tree:
        kid = tree.spawn()
        nvml = FakeNvml()
        nvml.devices[0]["pids"] = [kid]  # the run's child holds the first GPU; the second is someone else's
        sampler, usage = ProcessTreeSampler(tree.pid, gpu=GpuSampler(nvml)), RunUsage()
        first = sampler.collect()
        time.sleep(0.05)
        second = sampler.collect(final=True)
        plain = ProcessTreeSampler(tree.pid).collect()
    assert [(g.index, g.name, g.memory_bytes) for g in first.gpus] == [(0, "NVIDIA H100 80GB HBM3", 2 * 1024**3)]
    assert first.pids == {tree.pid, kid} and plain.gpus == () and plain.pids == first.pids
    sampler.fold(first, usage)
    sampler.fold(second, usage)
    assert usage.local.gpu.seconds_by_model == {
        "NVIDIA H100 80GB HBM3": pytest.approx(second.timestamp - first.timestamp)}


def test_unreadable_members_are_named_to_the_run(caplog: pytest.LogCaptureFixture) -> None:
    sampler = ProcessTreeSampler()
    assert sampler.close(RunUsage()).tags == {}
    sampler._lost_unreadable = {1003, 1001}  # gone unreaped: their CPU is nowhere in the tree's counters
    summary = sampler.close(RunUsage())
    assert summary.tags == {"finops.unaccounted_processes": "2", "finops.unaccounted_pids": "1001,1003"}
    why = ("2 process(es) of the run's tree could not be read (access denied); "
           "their CPU and memory are not in the cost")
    assert summary.lost == why
    assert f"mlflow-finops: {why}: pids 1001,1003" in caplog.text
    sampler._lost_unreadable = set(range(2000, 2060))
    many = sampler.close(RunUsage()).tags
    assert many["finops.unaccounted_processes"] == "60"
    assert many["finops.unaccounted_pids"] == ",".join(map(str, range(2000, 2050)))  # the first 50


def test_charging_from_the_process_start_with_nothing_before_it() -> None:
    sampler, usage = ProcessTreeSampler(), RunUsage()
    sampler.charge_from(90.0, usage)
    sampler.fold(reading(100.0, 4.0, 2.0), usage)
    assert usage.local.cpu_s == 4.0 and usage.local.ram_gb_s == 10.0  # exactly: from 0 bytes and 0 CPU-s


def test_the_machine_description_read_from_the_kernel() -> None:
    from mlflow_finops.cost import process

    lines = [ln for ln in open("/proc/cpuinfo").read().splitlines() if ln.lower().startswith("model name")]
    if lines:
        assert process._cpu_model() == lines[0].split(":", 1)[1].strip()
    info = process.MachineInfo("h", "cpu", 8, 15.625, ("A100", "L4"))
    assert info.tags() == {"finops.machine.hostname": "h", "finops.machine.cpu_model": "cpu",
                           "finops.machine.cpu_cores": "8", "finops.machine.ram_gb": "15.6",
                           "finops.machine.gpu_count": "2", "finops.machine.gpu_models": "A100,L4"}
    assert process.MachineInfo("h", "cpu", 1, 1.0, ()).tags()["finops.machine.gpu_models"] == "none"


@pytest.mark.parametrize(
    "cpu_max, memory_max, cpus, ram_gib",
    [
        (None, None, None, None),  # no cgroup v2 limits: the affinity and the machine
        ("max 100000", "max", None, None),
        ("150000 100000", str(2 * 1024**3), 1.5, 2.0),
        ("50000000 100000", str(10**15), None, None),  # limits above the machine: the machine
    ],
)
def test_what_the_process_may_use_under_a_cgroup_limit(monkeypatch: pytest.MonkeyPatch, cpu_max, memory_max,
                                                       cpus, ram_gib) -> None:
    """The cgroup files are read by our own helper (substituted here); affinity and RAM are the kernel's."""
    from mlflow_finops.cost import process

    files = {"cpu.max": cpu_max, "memory.max": memory_max}
    monkeypatch.setattr(process, "_cgroup_file", files.get)
    cores = float(len(os.sched_getaffinity(0)))
    assert allocated_cpus() == (cores if cpus is None else min(cores, cpus))
    total = psutil.virtual_memory().total
    assert allocated_ram_gb() == (total if ram_gib is None else ram_gib * 1024**3) / GB


def test_a_cgroup_file_is_read_from_this_process_own_cgroup() -> None:
    """Against the host's own cgroup tree: v2 (``cgroup.procs`` of the process's cgroup) or, on a
    v1 host whose unified line is the root, a v1 controller's file reached from it."""
    from pathlib import Path

    from mlflow_finops.cost import process

    unified = [ln for ln in Path("/proc/self/cgroup").read_text().splitlines() if ln.startswith("0::")]
    if not unified:
        pytest.skip("no unified cgroup line")
    base = Path("/sys/fs/cgroup") / unified[0][len("0::"):].lstrip("/")
    names = [n for n in ("cpu.max", "memory.max", "cpu/cpu.shares", "memory/memory.limit_in_bytes")
             if (base / n).is_file()]
    if not names:
        pytest.skip(f"no cgroup control file under {base}")
    for name in names:
        assert process._cgroup_file(name) == (base / name).read_text().strip()
    assert process._cgroup_file("no-such-control") is None
