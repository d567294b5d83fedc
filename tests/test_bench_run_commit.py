"""bench/run_commit.py: the commit every benchmark's log names. CPU only."""
import os
import subprocess
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)
from run_commit import measured_commit  # noqa: E402  (bench/ is not a package)


def head_of(folder) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=folder).stdout.strip()


def test_the_callers_commit_comes_first(monkeypatch):
    monkeypatch.setenv("FIBSPARSE_COMMIT", "0123abc")
    assert measured_commit() == "0123abc"


def test_without_it_the_head_of_the_checkout_it_runs_in(monkeypatch, tmp_path):
    """Run inside another repository (as tools/before_after.sh runs one checkout's
    scripts in another), the log names that repository's HEAD."""
    monkeypatch.delenv("FIBSPARSE_COMMIT", raising=False)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run([*git, "-C", str(tmp_path), "commit", "-q", "--allow-empty", "-m", "other"], check=True)
    monkeypatch.chdir(tmp_path)
    assert measured_commit() == head_of(tmp_path) != ""


def test_outside_any_checkout_the_one_around_the_script(monkeypatch, tmp_path):
    monkeypatch.delenv("FIBSPARSE_COMMIT", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # tmp_path is no repository
    monkeypatch.chdir(tmp_path)
    expected = head_of(BENCH) or "unknown"  # a copy of the tree without its repository
    assert measured_commit() == expected


def test_without_git_unknown(monkeypatch):
    monkeypatch.delenv("FIBSPARSE_COMMIT", raising=False)
    monkeypatch.setenv("PATH", "")  # no git to run
    assert measured_commit() == "unknown"
