"""Run a Python driver in a subprocess and SIGKILL it at a line it prints: the crash tests' one harness."""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def run_and_kill(driver: str, args: list[str], marker: str | None, count: int = 1) -> tuple[subprocess.Popen, int]:
    """Runs ``python -c driver *args``; kills it with SIGKILL when it prints ``marker`` for the ``count``-th time.

    Returns:
      ``(process, seen)``: the finished process (its stderr still readable) and how often ``marker`` was seen.
    """
    process = subprocess.Popen(
        [sys.executable, "-c", driver, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    seen = 0
    try:
        for line in process.stdout:
            if marker is not None and line.strip() == marker:
                seen += 1
                if seen == count:
                    process.send_signal(signal.SIGKILL)
                    break
        process.wait(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process, seen
