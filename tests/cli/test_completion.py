"""Shell completion, as the README documents it: click's, through ``_QKMSCTL_COMPLETE``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

_BESIDE = Path(sys.executable).with_name("qkmsctl")  # the venv's entry point
QKMSCTL = str(_BESIDE) if _BESIDE.exists() else shutil.which("qkmsctl")


@pytest.mark.skipif(QKMSCTL is None, reason="qkmsctl is not installed on PATH")
def test_bash_completion_completes_a_command_name() -> None:
    assert QKMSCTL is not None
    env = {
        **os.environ,
        "_QKMSCTL_COMPLETE": "bash_complete",
        "COMP_WORDS": "qkmsctl pol",
        "COMP_CWORD": "1",
    }
    done = subprocess.run([QKMSCTL], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "plain,policy" in done.stdout.splitlines()


@pytest.mark.skipif(QKMSCTL is None, reason="qkmsctl is not installed on PATH")
def test_the_bash_script_is_offered() -> None:
    assert QKMSCTL is not None
    env = {**os.environ, "_QKMSCTL_COMPLETE": "bash_source"}
    done = subprocess.run([QKMSCTL], env=env, capture_output=True, text=True, timeout=60)
    assert "_qkmsctl_completion()" in done.stdout
