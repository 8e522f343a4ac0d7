"""PID 1 of the PID namespace that Ollama and the exporter share (see docker-compose.yml).

The exporter reads the CPU time and memory of `ollama serve` and its model runners, so it
must see Ollama's processes. Had it joined Ollama's own namespace, where `ollama serve` is
PID 1, every exit of Ollama would kill the exporter with it (the kernel kills a namespace's
processes when its PID 1 exits), and Docker cannot restart a container whose PID namespace
is gone. This process holds the namespace instead and never exits on its own. Like any
PID 1 it reaps the processes orphaned into the namespace; SIGTERM or SIGINT ends it.
"""

import os
import signal
import sys

SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}


def reap() -> None:
    """Collect every child that has exited (one SIGCHLD may stand for several)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main() -> int:
    # Blocked signals stay pending until sigwait takes them. A namespace's PID 1 receives
    # no signal whose disposition is the default, unless the signal is blocked.
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    while True:
        if signal.sigwait(SIGNALS) != signal.SIGCHLD:
            return 0
        reap()


if __name__ == "__main__":
    sys.exit(main())
