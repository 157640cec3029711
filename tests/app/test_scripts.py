"""Every benchmark (bench/) and experiment script (experiments/) still starts: ``--help``
answers with its usage and exit 0, and the shell scripts parse. Scripts that import moved or
renamed code fail here rather than when someone runs them a month later."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted([*ROOT.glob("bench/*.py"), *ROOT.glob("experiments/*.py")])
SHELL = sorted([*ROOT.glob("bench/*.sh"), *ROOT.glob("experiments/*.sh")])

pytestmark = pytest.mark.slow


def test_there_are_scripts_to_check():
    assert len(SCRIPTS) >= 15 and len(SHELL) >= 1


def test_every_python_script_answers_help():
    procs = {
        p: subprocess.Popen(
            [sys.executable, str(p), "--help"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},  # this checkout, whatever is installed
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for p in SCRIPTS
    }
    failed = {}
    for path, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        if proc.returncode != 0 or "usage" not in out.lower():
            failed[path.relative_to(ROOT).as_posix()] = out[-600:]
    assert not failed, failed


@pytest.mark.parametrize("path", SHELL, ids=lambda p: p.name)
def test_shell_scripts_parse(path):
    r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
