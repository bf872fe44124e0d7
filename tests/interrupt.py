"""Ctrl-C for real: a child ``atpstar`` process that holds after its first save of finished work until
the test sends SIGINT, so that a slow or busy machine cannot let it finish first (no clock race)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_HOLD = """
import sys, time
from {module} import {owner}
save, held = {owner}.{cls}.{method}, []
def hold(self, *args, **kwargs):
    save(self, *args, **kwargs)
    while self.path is not None and self.path.exists() and not held:  # work is saved: wait for the SIGINT
        try:
            time.sleep(0.02)
        except KeyboardInterrupt:
            held.append(True)  # hold once: the saves after the signal go through
            raise
{owner}.{cls}.{method} = hold
from atpstar.run.cli import main
sys.exit(main(sys.argv[1:]))
"""
HOLDS = {"checkpoint": dict(module="atpstar", owner="checkpoint", cls="Checkpoint", method="update"),
         "verified": dict(module="atpstar.verification", owner="store", cls="VerifiedStore", method="save")}
"""What the child holds after: a method's checkpoint (exact patching) or verification's store."""


def interrupt_after_first_save(argv: list[str], saved: Path, hold: str) -> tuple[int, str, str]:
    """Run ``atpstar ARGV`` in a child, wait until ``saved`` exists (the child then holds), send SIGINT;
    (exit status, stdout, stderr)."""
    cmd = [sys.executable, "-c", _HOLD.format(**HOLDS[hold]), *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 900
    while not saved.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before its first save of {saved.name}: {proc.communicate()}"
    assert saved.exists(), f"no {saved.name} within 15 minutes"
    proc.send_signal(signal.SIGINT)
    stdout, err = proc.communicate(timeout=600)
    return proc.returncode, stdout, err
