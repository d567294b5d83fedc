"""The repository's scripts that a CPU machine can run in part."""
import os
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_gpu_check(mode, tmp_path, fakes=None):
    """tools/gpu_check.sh MODE, its log in tmp_path; `fakes` maps a command
    (python3, nvcc, ...) to the exit status of a stand-in put first on PATH
    that only prints its arguments. In a session of its own, so that a
    timeout stops whatever it started."""
    env = dict(os.environ, OUT=str(tmp_path))
    if fakes is not None:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for command, status in fakes.items():
            fake = bin_dir / command
            fake.write_text(f'#!/bin/bash\necho "[{command}] $*"\nexit {status}\n')
            fake.chmod(0o755)
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    process = subprocess.Popen(["bash", str(ROOT / "tools" / "gpu_check.sh"), mode], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    return process.returncode, output


def test_gpu_check_refuses_an_unknown_mode_before_building(tmp_path):
    """tools/gpu_check.sh names the modes it takes and exits before any step
    (a build, a test run) when it gets another."""
    status, output = run_gpu_check("--peer", tmp_path)
    assert status == 2
    assert "MODE must be --quick, --peers or --gpu-tests" in output and "'--peer'" in output
    assert "===" not in output  # no step started


GPU_COMMANDS = ("python3", "nvidia-smi", "nvcc", "compute-sanitizer")


@pytest.mark.parametrize("mode, steps", [
    ("--peers", ["build", "self_check", "fair_sweep", "kernel_times", "memcheck", "racecheck", "synccheck"]),
    ("--gpu-tests", ["build", "self_check", "gpu_tests"]),
])
def test_gpu_check_two_call_modes_run_their_steps_and_stop(tmp_path, mode, steps):
    """Each of the two-call modes runs its own steps, prints them in its
    summary and stops there (none of the whole check's steps follow)."""
    status, output = run_gpu_check(mode, tmp_path, fakes={command: 0 for command in GPU_COMMANDS})
    assert status == 0, output
    summary = output.split("=== summary")[1]
    assert [line.split(":")[0].strip() for line in summary.strip().splitlines()] == steps
    assert "=== bench:" not in output and "=== tests:" not in output
    assert (tmp_path / "gpu_check.log").read_text().count("=== summary") == 1


def test_gpu_check_fails_when_a_step_fails(tmp_path):
    """A failing step (here every sanitizer) makes the check's exit status 1,
    and the summary names it."""
    fakes = {command: 0 for command in GPU_COMMANDS} | {"compute-sanitizer": 1}
    status, output = run_gpu_check("--peers", tmp_path, fakes=fakes)
    assert status == 1
    assert "memcheck: rc=1" in output and "fair_sweep: rc=0" in output
