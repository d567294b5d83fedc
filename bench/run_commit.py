"""The commit a benchmark's log names as the code it measured."""
import os
import subprocess


def _head(folder: str) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=folder).stdout.strip()
    except OSError:  # no git to run
        return ""


def measured_commit() -> str:
    """FIBSPARSE_COMMIT where the caller sets it (the device machine runs a copy of the
    working tree whose git metadata may be older than its files); else the HEAD of the
    checkout the benchmark runs in (the current directory: tools/before_after.sh runs one
    checkout's scripts inside another, the one whose build is measured); else the HEAD of
    the checkout around this file; else "unknown"."""
    if os.environ.get("FIBSPARSE_COMMIT"):
        return os.environ["FIBSPARSE_COMMIT"]
    return _head(os.getcwd()) or _head(os.path.dirname(os.path.abspath(__file__))) or "unknown"
