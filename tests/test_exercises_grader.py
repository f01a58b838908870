"""The exercises' grader is itself graded: against the stubs every exercise test fails (so the grader
can fail), against the repo's own implementations every one passes (so the grader is right)."""
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

STUBS = 8  # the exercises in exercises/student.py, each a stub raising NotImplementedError until solved


def grade(implementation):
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "exercises"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "ETO_EXERCISES": implementation})
    counts = dict((word, int(n)) for n, word in re.findall(r"(\d+) (passed|failed|error)", done.stdout))
    return counts, done.stdout[-3000:]


def test_the_grader_passes_the_reference_implementations():
    counts, output = grade("reference")
    assert counts.get("passed", 0) >= 10 and "failed" not in counts and "error" not in counts, output


def test_the_grader_fails_every_test_on_the_stubs():
    source = open(os.path.join(ROOT, "exercises", "student.py"), encoding="utf-8").read()
    if source.count("raise NotImplementedError") < STUBS:
        pytest.skip("exercises/student.py holds your solutions, not the stubs")
    counts, output = grade("student")
    assert counts.get("failed", 0) >= 10 and "passed" not in counts, output
