"""The repository's scripts that a CPU machine can run in part."""
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_refuses_an_unknown_mode_before_building():
    """tools/gpu_check.sh names the modes it takes and exits before any step
    (a build, a test run) when it gets another."""
    run = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--peer"], capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 2
    assert "MODE must be --quick, --peers or --gpu-tests" in run.stdout and "'--peer'" in run.stdout
    assert "===" not in run.stdout  # no step started
