"""Leave the process even when a worker thread never returns (a codec stuck in a deadlock).

Python joins every non-daemon thread at exit, and `concurrent.futures` joins its pools' threads: one
thread stuck in native code would hold the server up forever after it stopped serving. The server's
own clean-up has waited for what it owns by then; what is still running after a grace period is stuck.
"""

from __future__ import annotations

import logging
import os
import threading
import time

logger = logging.getLogger(__name__)


def exit_past_stuck_threads(grace_s: float, code: int = 0) -> None:
    """Wait up to `grace_s` for the other non-daemon threads; if some still run, name them and exit now."""
    deadline = time.monotonic() + grace_s
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    if stuck:
        logger.warning("threads still running %.0f s after shutdown, exiting without them: %s", grace_s, stuck)
        logging.shutdown()
        os._exit(code)
