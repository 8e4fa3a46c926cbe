"""A worker thread stuck in native code (a codec deadlock) does not hold the process up at exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

STUCK = textwrap.dedent(
    """
    import logging, threading
    from concurrent.futures import ThreadPoolExecutor
    from server.stuck_threads import exit_past_stuck_threads

    logging.basicConfig()
    never = threading.Event()
    threading.Thread(target=never.wait, name="stuck-codec").start()
    pool = ThreadPoolExecutor(1, thread_name_prefix="stuck-pool")
    pool.submit(never.wait)
    pool.shutdown(wait=False)
    threading.Thread(target=lambda: None, name="quick").start()
    exit_past_stuck_threads(0.5, code=3)
    print("not reached")
    """
)


def test_the_process_exits_past_stuck_threads_naming_them() -> None:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", STUCK], capture_output=True, text=True, timeout=30)
    assert time.monotonic() - started < 15
    assert done.returncode == 3 and "not reached" not in done.stdout
    assert "stuck-codec" in done.stderr and "stuck-pool" in done.stderr and "quick" not in done.stderr


def test_without_stuck_threads_it_returns() -> None:
    code = "from server.stuck_threads import exit_past_stuck_threads; exit_past_stuck_threads(0.5, code=3); print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == "ok"
