"""``benchmarks.isolated``: a child process answers its measurement as one JSON line; a failing child is
an error that names the command and shows its stderr; ``peak_of`` sees what a call adds to the peak
resident memory, and (on Linux) not what came before it."""

import os
import sys

import numpy as np
import pytest

from benchmarks.isolated import peak_of, run_child

MB = 2**20


def test_a_child_answers_one_json_line(tmp_path):
    (tmp_path / "kid.py").write_text(
        "import os, sys\nfrom benchmarks.isolated import answer\n"
        "print('noise before the answer')\n"
        "answer({'argv': sys.argv[1:], 'threads': os.environ['OMP_NUM_THREADS'], 'extra': os.environ['EXTRA']})\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]), "EXTRA": "yes"}
    got = run_child("kid", ["--n", 3], threads=2, env=env)
    assert got == {"argv": ["--n", "3"], "threads": "2", "extra": "yes"}


def test_a_failing_child_names_its_command_and_shows_its_error():
    with pytest.raises(RuntimeError, match=r"(?s)-m benchmarks\.no_such_module.*exit status 1.*No module named"):
        run_child("benchmarks.no_such_module", [])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the peak is reset through /proc on Linux only")
def test_peak_of_sees_the_call_and_not_what_came_before():
    big = np.ones(200 * MB // 8)  # 200 MB touched, then freed: the process's peak is now high
    del big
    _, _, before = peak_of(lambda: None)
    assert before.reset and before.growth_mb < 50  # the earlier 200 MB do not count
    total, _, peak = peak_of(lambda: np.ones(100 * MB // 8).sum())
    assert total == 100 * MB // 8 and 90 < peak.growth_mb < 200
