"""The commit a benchmark's log names as the code it measured."""
import os
import subprocess


def measured_commit() -> str:
    """FIBSPARSE_COMMIT where the caller sets it (the device machine runs a copy of the
    working tree whose git metadata may be older than its files), else the checkout's
    HEAD, else "unknown" (no git, or no repository around this file)."""
    if os.environ.get("FIBSPARSE_COMMIT"):
        return os.environ["FIBSPARSE_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        head = ""
    return head or "unknown"
