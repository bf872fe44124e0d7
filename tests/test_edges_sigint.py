"""Ctrl-C (a real SIGINT to a real ``atpstar run`` process) during edge verification, then ``atpstar resume``:
the verified edges patched before the signal are reused from the checkpoint, and the result is the one an
uninterrupted run gives. The child holds after its first checkpoint save until the signal comes, and the test
signals only once that file exists, so a slow or busy machine cannot let the run finish first."""

import json

import pandas as pd
from interrupt import interrupt_after_first_save
from tinydir import tiny_dir  # noqa: F401 - fixture

from atpstar.run.cli import main

ARGS = ["--pairs", "2", "--level", "edges", "--method", "atp", "--verify-budget", "30edges", "--batch-size", "1",
        "--checkpoint-every", "0", "--quiet"]


def test_a_real_sigint_during_edge_verification_then_resume(tiny_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "cut"
    argv = ["run", "--model", tiny_dir, *ARGS, "--out", str(out)]
    status, stdout, err = interrupt_after_first_save(argv, out / "checkpoints" / "verify-edges.ckpt", "verified")
    assert status == 130, (stdout, err)
    assert "Traceback" not in err and f"atpstar resume {out}" in err
    assert not (out / "stages" / "verified-edges.parquet").exists()  # stopped inside edge verification
    assert main(["resume", str(out), "--quiet"]) == 0
    stage = json.loads((out / "run.json").read_text())["stages"]["verify:edges"]
    assert stage["reused"] >= 1 and stage["reused"] + stage["patched"] == 30  # the saved edges are not patched again
    assert main(["run", "--model", tiny_dir, *ARGS, "--out", str(tmp_path / "fresh")]) == 0
    capsys.readouterr()
    cut, fresh = (pd.read_parquet(d / "stages" / "verified-edges.parquet") for d in (out, tmp_path / "fresh"))
    pd.testing.assert_frame_equal(cut, fresh)
