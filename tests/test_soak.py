"""The soak of `make reliability` (scripts/soak.py), short: an exporter process at a fast
schedule for half a minute against the fake server. It must keep probing, end with no more
file descriptors or threads than it had between its first runs, and stop cleanly on SIGTERM.
The full soak (an hour by default, `make soak`) measures memory growth; this catches a leak of
descriptors or threads, or a crash, in every `make test`."""

import io

from tests.kit.soak import soak


def test_a_short_soak_keeps_probing_and_leaks_no_descriptor_or_thread():
    log = io.StringIO()
    result = soak(30, 2, 10, out=log)
    assert result["exit_code"] == 0, log.getvalue()
    assert result["requests"] >= 10, log.getvalue()  # a run every 2 s: fifteen runs of six requests
    assert not result["leak"], log.getvalue()  # fds and threads back where they were
