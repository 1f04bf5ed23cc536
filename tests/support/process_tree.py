"""A real process tree whose members' memory and CPU a test sets: the sampler's arithmetic checked
against the kernel's own figures (no psutil mocking).

Every member runs the same small script and obeys one-line commands on its stdin, answering one line:

* ``grow N``: allocate N MiB and write every page (resident until ``free``);
* ``free``: release everything grown;
* ``burn S``: spin for S seconds of this member's CPU time;
* ``spawn``: start a child member; answers its pid;
* ``to PID CMD``: pass ``CMD`` to the child ``PID`` and answer its answer;
* ``reap PID``: end the child ``PID`` and wait for it (its CPU moves to this member's children counters);
* ``exit``: leave at once, without waiting for any child (they are re-parented away from the tree).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import psutil

MiB = 1024 * 1024

MEMBER = r'''
import os, subprocess, sys, time
held, kids = [], {}
for line in sys.stdin:
    cmd, *args = line.split()
    out = "ok"
    if cmd == "grow":
        held.append(bytearray(b"\1") * (int(args[0]) << 20))
    elif cmd == "free":
        held.clear()
    elif cmd == "burn":
        end = time.process_time() + float(args[0])
        while time.process_time() < end:
            pass
    elif cmd == "spawn":
        p = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[1]], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, bufsize=1)
        kids[p.pid] = p
        out = str(p.pid)
    elif cmd == "to":
        p = kids[int(args[0])]
        p.stdin.write(" ".join(args[1:]) + "\n")
        p.stdin.flush()
        out = p.stdout.readline().strip() or "gone"
    elif cmd == "reap":
        p = kids.pop(int(args[0]))
        try:
            p.stdin.close()
        except OSError:
            pass
        p.wait()
    elif cmd == "exit":
        os._exit(0)
    print(out, flush=True)
for p in kids.values():  # at EOF: end the children and reap them, so the kernel's count holds them
    p.stdin.close()
    p.wait()
'''


class ProcessTree:
    """A root member started by this process; ``tell`` drives it (``pid=None``) or any descendant."""

    def __init__(self) -> None:
        self.root = subprocess.Popen([sys.executable, "-c", MEMBER, MEMBER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.parent_of: dict[int, int] = {}  # member pid -> the member that started it

    @property
    def pid(self) -> int:
        return self.root.pid

    def _send(self, line: str) -> str:
        assert self.root.stdin is not None and self.root.stdout is not None
        self.root.stdin.write(line + "\n")
        self.root.stdin.flush()
        return self.root.stdout.readline().strip()

    def _route(self, pid: int | None, cmd: str) -> str:
        """``cmd`` for member ``pid``, wrapped in one ``to`` per level below the root."""
        path = []
        while pid is not None and pid != self.pid:
            path.append(pid)
            pid = self.parent_of[pid]
        for p in path:
            cmd = f"to {p} {cmd}"
        return cmd

    def tell(self, pid: int | None, cmd: str) -> str:
        return self._send(self._route(pid, cmd))

    def spawn(self, parent: int | None = None) -> int:
        child = int(self.tell(parent, "spawn"))
        self.parent_of[child] = parent or self.pid
        assert self.tell(child, "free") == "ok"  # answered: its interpreter has started
        return child

    def reap(self, pid: int) -> None:
        parent = self.parent_of.pop(pid)
        assert self.tell(parent, f"reap {pid}") == "ok"

    def rss(self, pids: Any) -> int:
        """The members' resident memory now, each read on its own (what the tree's RSS must add up to)."""
        return sum(psutil.Process(p).memory_info().rss for p in pids)

    def close(self) -> float:
        """End the tree; the CPU seconds the kernel accounted to the root and everything it reaped."""
        assert self.root.stdin is not None
        self.root.stdin.close()  # every member reads EOF, reaps its children and exits
        _, _, ru = os.wait4(self.root.pid, 0)
        self.root.returncode = 0
        return ru.ru_utime + ru.ru_stime

    def kill(self) -> None:
        """Whatever is left (a failed test): every member, leaves first."""
        try:
            members = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            members = []
        for p in [*reversed(members)]:
            try:
                p.kill()
            except psutil.Error:
                pass
        if self.root.returncode is None:
            self.root.kill()
            self.root.wait()

    def __enter__(self) -> "ProcessTree":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
