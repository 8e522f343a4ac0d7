"""docker/pid-namespace.py as PID 1 of a new PID namespace: reaps orphans, stops on SIGTERM.

Needs root (unshare/nsenter), like the engine test, so it carries the `stack` marker.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.kit.exporters import ROOT, wait_for

pytestmark = pytest.mark.stack
SCRIPT = os.path.join(ROOT, "docker", "pid-namespace.py")


def _ns_init_pid(unshare_pid: int) -> int:
    """The host pid of the script: unshare --fork's only child."""
    children = open(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read().split()
    return int(children[0]) if children else 0


def _zombies_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == pid:
                out.append(int(entry))
    return out


def test_holder_reaps_orphans_and_exits_on_sigterm():
    holder = subprocess.Popen(["unshare", "--pid", "--fork", sys.executable, SCRIPT])
    try:
        init = wait_for(lambda: _ns_init_pid(holder.pid), timeout=10, what="the namespace's PID 1")
        time.sleep(0.3)  # signals blocked before it waits
        # A shell in the namespace starts a short job and exits: the job is orphaned to PID 1.
        subprocess.run(["nsenter", "-t", str(init), "-p", "--", "sh", "-c", "sleep 0.3 & exit 0"],
                       check=True, timeout=10)
        orphan_seen = wait_for(lambda: [p for p in os.listdir("/proc") if p.isdigit() and _parent(p) == init],
                               timeout=5, what="the orphan reparented to the holder")
        assert orphan_seen
        time.sleep(1.0)
        assert _zombies_of(init) == []
        assert holder.poll() is None  # still holding the namespace
        os.kill(init, signal.SIGTERM)
        assert holder.wait(10) == 0
    finally:
        if holder.poll() is None:
            holder.kill()


def _parent(pid: str) -> int:
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1
