"""CPU time and memory of a server's process tree, read from /proc (Linux).

CPU is utime + stime of every process in the tree (all its threads), plus what its reaped children
used; it counts work done, whatever else the machine is doing, which makes it the steadiest figure
on a shared machine. Memory is the sum of VmRSS over the tree, sampled, and VmHWM, the kernel's
own peak, which `reset_peak()` restarts (clear_refs) so that each run has its own.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


def tree(pid: int) -> list[int]:
    """`pid` and its descendants alive now."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of the tree under `pid`, with its reaped children's."""
    ticks = 0
    for member in tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (_PROC / str(member) / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            # Fields 14-17 of stat (utime, stime, cutime, cstime), counted from "state" as 3.
            ticks += sum(int(f) for f in fields[11:15])
    return ticks / _TICK


def _status_kb(pid: int, key: str) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in (_PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def rss_bytes(pid: int) -> int:
    """Resident memory of the tree now."""
    return sum(_status_kb(member, "VmRSS:") for member in tree(pid)) * 1024


def hwm_bytes(pid: int) -> int:
    """The tree's peaks of resident memory (each process's since start or since `reset_peak`), summed."""
    return sum(_status_kb(member, "VmHWM:") for member in tree(pid)) * 1024


def reset_peak(pid: int) -> bool:
    """Restart VmHWM of the tree's processes; False where the kernel does not allow it."""
    ok = True
    for member in tree(pid):
        try:
            (_PROC / str(member) / "clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


#: TCP counters of the whole machine (/proc/net/netstat, /proc/net/snmp) worth watching under load.
TCP_COUNTERS = ("ListenOverflows", "TCPAbortOnClose", "TCPAbortOnData", "EstabResets", "OutRsts")


def tcp_counters() -> dict[str, int]:
    """The kernel's TCP counters in `TCP_COUNTERS`: a connection refused for a full accept queue, reset, ..."""
    found: dict[str, int] = {}
    for name in ("netstat", "snmp"):
        with contextlib.suppress(OSError):
            lines = (_PROC / "net" / name).read_text().splitlines()
            for heads, values in zip(lines[::2], lines[1::2], strict=False):
                if heads.startswith(("TcpExt:", "Tcp:")):
                    pairs = zip(heads.split()[1:], values.split()[1:], strict=False)
                    found.update({k: int(v) for k, v in pairs if k in TCP_COUNTERS})
    return found


class RSSSampler:
    """The largest tree RSS seen while running, sampled every `every` seconds in a thread."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.pid = pid
        self.every = every
        self.peak = 0
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def _sample(self) -> None:
        rss = rss_bytes(self.pid)
        self.samples.append(rss)
        self.peak = max(self.peak, rss)
