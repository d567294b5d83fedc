"""bench/run_commit.py: the commit every benchmark's log names. CPU only."""
import os
import subprocess
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)
from run_commit import measured_commit  # noqa: E402  (bench/ is not a package)


def test_the_callers_commit_comes_first(monkeypatch):
    monkeypatch.setenv("FIBSPARSE_COMMIT", "0123abc")
    assert measured_commit() == "0123abc"


def test_without_it_the_checkouts_head(monkeypatch):
    monkeypatch.delenv("FIBSPARSE_COMMIT", raising=False)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=BENCH)
    expected = head.stdout.strip() or "unknown"  # a copy of the tree without its repository
    assert measured_commit() == expected


def test_without_git_unknown(monkeypatch):
    monkeypatch.delenv("FIBSPARSE_COMMIT", raising=False)
    monkeypatch.setenv("PATH", "")  # no git to run
    assert measured_commit() == "unknown"
