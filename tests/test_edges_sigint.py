"""Ctrl-C (a real SIGINT to a real ``atpstar run`` process) during edge verification, then ``atpstar resume``:
the verified edges patched before the signal are reused from the checkpoint, and the result is the one an
uninterrupted run gives. The child holds after its first checkpoint save until the signal comes, and the test
signals only once that file exists, so a slow or busy machine cannot let the run finish first."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
from tinydir import tiny_dir  # noqa: F401 - fixture

from atpstar.run.cli import main

HOLD_AFTER_FIRST_SAVE = """
import sys, time
from atpstar.verification import store
save, held = store.VerifiedStore.save, []
def hold(self, *args, **kwargs):
    save(self, *args, **kwargs)
    while self.path is not None and self.path.exists() and not held:  # verified edges are saved: wait for SIGINT
        try:
            time.sleep(0.02)
        except KeyboardInterrupt:
            held.append(True)  # hold once: the save after the signal goes through
            raise
store.VerifiedStore.save = hold
from atpstar.run.cli import main
sys.exit(main(sys.argv[1:]))
"""

ARGS = ["--pairs", "2", "--level", "edges", "--method", "atp", "--verify-budget", "30edges", "--batch-size", "1",
        "--checkpoint-every", "0", "--quiet"]


def test_a_real_sigint_during_edge_verification_then_resume(tiny_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "cut"
    cmd = [sys.executable, "-c", HOLD_AFTER_FIRST_SAVE, "run", "--model", tiny_dir, *ARGS, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    checkpoint, deadline = out / "checkpoints" / "verify-edges.ckpt", time.monotonic() + 900
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before its first edge checkpoint: {proc.communicate()}"
    assert checkpoint.exists(), "no edge checkpoint within 15 minutes"
    proc.send_signal(signal.SIGINT)
    stdout, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, (stdout, err)
    assert "Traceback" not in err and f"atpstar resume {out}" in err
    assert not (out / "stages" / "verified-edges.parquet").exists()  # stopped inside edge verification
    assert main(["resume", str(out), "--quiet"]) == 0
    stage = json.loads((out / "run.json").read_text())["stages"]["verify:edges"]
    assert stage["reused"] >= 1 and stage["reused"] + stage["patched"] == 30  # the saved edges are not patched again
    assert main(["run", "--model", tiny_dir, *ARGS, "--out", str(tmp_path / "fresh")]) == 0
    capsys.readouterr()
    cut, fresh = (pd.read_parquet(d / "stages" / "verified-edges.parquet") for d in (out, tmp_path / "fresh"))
    pd.testing.assert_frame_equal(cut, fresh)
