"""The repository's scripts that a CPU machine can run in part."""
import os
import signal
import subprocess
import sys
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


def load_tool(name):
    """tools/NAME.py as a module (ab_switch.py imports bench/timing.py and tools/kernel_times.py by path)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_sass_matches_a_kernel_that_gained_a_template_argument():
    """With --new-argument KERNEL=VALUE, the after tree's instantiations with
    VALUE last are named as the before tree names them; the rest, and other
    kernels, keep their names (the new ones then show as not in the before tree)."""
    compare_sass = load_tool("compare_sass")
    rules = dict([compare_sass.parse_new_argument("fwd_hopper_kernel=false")])
    maps = "std::conditional<true, fibsparse::FractionalForwardTensorMaps, fibsparse::ForwardTensorMaps>::type"
    old = (f"void fibsparse::hopper_fwd::fwd_hopper_kernel<c10::BFloat16, 128, 2, 2, 1, true, false>"
           f"(fibsparse::Params, {maps}, {maps} const*, int)")
    assert compare_sass.without_new_argument(old.replace("false>(", "false, false>("), rules) == old
    mixed = old.replace("false>(", "false, true>(")
    assert compare_sass.without_new_argument(mixed, rules) == mixed
    other = "void fibsparse::mma_bwd::delta_kernel<c10::BFloat16, int, 128>(fibsparse::Params)"
    assert compare_sass.without_new_argument(other, rules) == other
    # Template arguments with parentheses of their own (an enum's value).
    dkdv = ("void fibsparse::mma_bwd::dkdv_mma_kernel<c10::BFloat16, float, 128, (fibsparse::mma_tiles::DkdvRoute)2, "
            "true{}>(fibsparse::Params)")
    assert compare_sass.without_new_argument(dkdv.format(", false"), {"dkdv_mma_kernel": "false"}) == dkdv.format("")
    # A kernel whose name ends with the rule's is not the rule's.
    longer = old.replace("fwd_hopper_kernel<", "my_fwd_hopper_kernel<").replace("false>(", "false, false>(")
    assert compare_sass.without_new_argument(longer, rules) == longer
    for bad in ("fwd_hopper_kernel", "=false", "fwd_hopper_kernel=", "fwd<x>=false"):
        with pytest.raises(Exception, match="KERNEL=VALUE"):
            compare_sass.parse_new_argument(bad)


def test_ab_switch_reads_its_switch_and_configurations():
    ab_switch = load_tool("ab_switch")
    assert ab_switch.parse_switch("FIBSPARSE_STORED_DSCORES=0") == ("FIBSPARSE_STORED_DSCORES", "0")
    assert ab_switch.parse_config("dense,65536,32,8,128,integer") == ("dense", 65536, 32, 8, 128, "integer")
    assert ab_switch.parse_config("packed,4096,8,8,64,window alone")[-1] == "window alone"
    assert ab_switch.parse_config("dense,65536,8,8,64,whole positions")[-1] == "whole positions"


@pytest.mark.parametrize("parser, text, message", [
    ("parse_switch", "FIBSPARSE_HOPPER", "FIBSPARSE_NAME=VALUE, got 'FIBSPARSE_HOPPER'"),
    ("parse_switch", "HOPPER=0", "FIBSPARSE_NAME=VALUE, got 'HOPPER=0'"),
    ("parse_switch", "FIBSPARSE_HOPPER=", "FIBSPARSE_NAME=VALUE, got 'FIBSPARSE_HOPPER='"),
    ("parse_config", "dense,65536,32,8,128", "6 fields .* got 5 in 'dense,65536,32,8,128'"),
    ("parse_config", "ragged,65536,32,8,128,integer", "layout must be one of .*, got 'ragged'"),
    ("parse_config", "dense,65536,32,8,128,sparse", "kind must be one of .*, got 'sparse'"),
    ("parse_config", "dense,64k,32,8,128,integer", "whole numbers, got 'dense,64k,32,8,128,integer'"),
])
def test_ab_switch_refuses_a_bad_switch_or_configuration(parser, text, message):
    """A switch without a FIBSPARSE_ name or a value, and a configuration with the wrong number of
    fields, an unknown layout or kind, or numbers that are not whole, are refused, naming what they got."""
    import argparse
    ab_switch = load_tool("ab_switch")
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        getattr(ab_switch, parser)(text)


def test_ab_switch_reports_the_fastest_and_the_median_round():
    """A side whose first round alone is fast (the GPU idle before it) wins on
    the fastest round and loses on the median: the report gives both."""
    ab_switch = load_tool("ab_switch")
    assert ab_switch.median([3.0, 1.0, 2.0]) == 2.0 and ab_switch.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    line = ab_switch.sides([90.0, 110.0, 112.0], [100.0, 101.0, 102.0], 1)
    assert "fastest: default 90.0  switched 100.0  default/switched -10.0%" in line
    assert "median: default 110.0  switched 101.0  default/switched +8.9%" in line
    assert line.endswith("rounds [90.0, 110.0, 112.0] / [100.0, 101.0, 102.0]")


def test_ab_switch_times_a_kernel_that_one_side_does_not_run():
    """A pass that the switch removes is timed on the side that runs it, where a ratio
    would divide by the other side's zero; a part that names nothing says so."""
    ab_switch = load_tool("ab_switch")
    line = ab_switch.kernel_line("delta", [301.0, 299.0, 305.0], [0.0, 0.0, 0.0], {False: True, True: False})
    assert line == "   'delta' kernels, us: only the default side runs them: fastest 299.0  median 301.0   " \
                   "rounds [301.0, 299.0, 305.0]\n"
    line = ab_switch.kernel_line("check", [0.0], [1.5], {False: False, True: True})
    assert "only the switched side runs them: fastest 1.5" in line
    assert "none ran" in ab_switch.kernel_line("dkvd", [0.0], [0.0], {False: False, True: False})
    both = ab_switch.kernel_line("dkdv", [90.0, 110.0, 112.0], [100.0, 101.0, 102.0], {False: True, True: True})
    assert both == f"   'dkdv' kernels, us: {ab_switch.sides([90.0, 110.0, 112.0], [100.0, 101.0, 102.0], 1)}\n"


def test_ab_switch_puts_the_callers_setting_back(monkeypatch):
    """Side A runs with the switch as the caller's environment had it, set or unset."""
    ab_switch = load_tool("ab_switch")
    for before in (None, "1"):
        if before is None:
            monkeypatch.delenv("FIBSPARSE_HOPPER", raising=False)
        else:
            monkeypatch.setenv("FIBSPARSE_HOPPER", before)
        setting = ab_switch.Setting("FIBSPARSE_HOPPER", "0")
        setting.apply(True)
        assert os.environ["FIBSPARSE_HOPPER"] == "0"
        setting.apply(False)
        assert os.environ.get("FIBSPARSE_HOPPER") == before


def test_ab_switch_prints_each_sides_gpu_clock_and_power():
    """Each side's summary over its own rounds' stretches; "-" where none fell in them; no
    line without a sampler (no nvidia-smi)."""
    ab_switch = load_tool("ab_switch")

    class Sampler:
        def summary_over(self, stretches):
            return f"{len(stretches)} stretches from {stretches[0][0]}" if stretches else None

    line = ab_switch.gpu_line(Sampler(), {False: [(1.0, 2.0), (3.0, 4.0)], True: []})
    assert line == "   GPU while the forward+backward rounds ran: default 2 stretches from 1.0 | switched -\n"
    assert ab_switch.gpu_line(None, {False: [(1.0, 2.0)], True: [(2.0, 3.0)]}) == ""


def test_ab_switch_says_when_both_sides_timed_the_same_kernels():
    ab_switch = load_tool("ab_switch")
    same = ab_switch.kernel_names({"dkdv_mma_kernel<1>"}, {"dkdv_mma_kernel<1>"})
    assert same.startswith("the same timed kernels on both sides")
    differ = ab_switch.kernel_names({"dkdv_mma_kernel<1>", "delta"}, {"dkdv_tma<1>", "delta"})
    assert differ == "timed kernels: default ['dkdv_mma_kernel<1>']; switched ['dkdv_tma<1>']"


def device_ab_tree(tmp_path, build_status=0):
    """A copy of tools/device_ab.sh (and the device_steps.sh it sources) in a scratch git repository whose
    tools/ab_switch.py and tools/sanitize_kernels.py print what they see of
    FIBSPARSE_CHECKED, and stand-ins on PATH: nvidia-smi, compute-sanitizer
    (runs the program it is given) and a python3 whose `-m pip` (the build)
    exits with `build_status`. Returns the script's path and the environment."""
    repo = tmp_path / "repo"
    (repo / "tools").mkdir(parents=True)
    (repo / "csrc").mkdir()
    (repo / "csrc" / "kernel.cu").write_text("// a kernel\n")
    script = repo / "tools" / "device_ab.sh"
    for name in ("device_ab.sh", "device_steps.sh"):
        (repo / "tools" / name).write_text((ROOT / "tools" / name).read_text())
    seen = 'import os, sys; print("{} sees", os.environ.get("FIBSPARSE_CHECKED"), sys.argv[1:])\n'
    (repo / "tools" / "ab_switch.py").write_text(seen.format("ab_switch"))
    (repo / "tools" / "sanitize_kernels.py").write_text(
        seen.format("sanitize_kernels")
        + 'print("sanitize_kernels caching allocator off:", os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING"))\n')
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "t"],
                   check=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fakes = {
        "nvidia-smi": "echo GPU\n",
        "compute-sanitizer": 'shift 6\nexec "$@"\n',
        "python3": f'if [ "$1" = "-m" ]; then echo build; exit {build_status}; fi\nexec {sys.executable} "$@"\n',
    }
    for command, body in fakes.items():
        fake = bin_dir / command
        fake.write_text("#!/bin/bash\n" + body)
        fake.chmod(0o755)
    env = dict(os.environ, OUT=str(tmp_path), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env.pop("FIBSPARSE_CHECKED", None)
    return script, env


def run_device_ab(script, env, *args):
    result = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=60)
    return result.returncode, result.stdout + result.stderr


def test_device_ab_sets_check_env_for_the_checks_alone(tmp_path):
    """--check-env reaches the sanitizers but not the A/B, whose default side
    is the caller's environment; the sanitizers run with torch's caching
    allocator off; the log names each step and ends with status 0."""
    script, env = device_ab_tree(tmp_path)
    status, output = run_device_ab(script, env, "--check-env", "FIBSPARSE_CHECKED=1", "--sanitize", "--",
                                   "FIBSPARSE_X=0", "--kernel", "dkdv")
    assert status == 0, output
    assert "ab_switch sees None ['FIBSPARSE_X=0', '--kernel', 'dkdv']" in output
    assert output.count("sanitize_kernels sees 1") == 3
    assert output.count("sanitize_kernels caching allocator off: 1") == 3
    log = (tmp_path / "ab.log").read_text()
    assert "=== summary" in log and "racecheck: rc=0" in log and "synccheck: rc=0" in log


def test_device_ab_stops_when_the_build_fails(tmp_path):
    """A failed build ends the call before the A/B, with status 1."""
    script, env = device_ab_tree(tmp_path, build_status=1)
    status, output = run_device_ab(script, env, "--sanitize", "--", "FIBSPARSE_X=0", "--kernel", "dkdv")
    assert status == 1
    assert "ab_switch sees" not in output and "build: rc=1" in output


def test_device_ab_stops_when_the_landing_patch_does_not_apply(tmp_path):
    """A landing patch that does not apply ends the call after the A/B, before
    any check runs on a tree that is not the landing."""
    script, env = device_ab_tree(tmp_path)
    patch = tmp_path / "bad.patch"
    patch.write_text("not a patch\n")
    status, output = run_device_ab(script, env, "--landing", str(patch), "--sanitize", "--", "FIBSPARSE_X=0")
    assert status == 1
    assert "ab_switch sees" in output and "sanitize_kernels sees" not in output
    assert "the patch did not apply" in output


def test_device_ab_runs_one_ab_per_group_of_arguments(tmp_path):
    """Arguments after a further `--` are a second A/B of the same build, run
    after the first, each with its own arguments and status line."""
    script, env = device_ab_tree(tmp_path)
    status, output = run_device_ab(script, env, "--", "FIBSPARSE_X=0", "--kernel", "dkdv", "--",
                                   "FIBSPARSE_Y=0", "--kernel", "dq")
    assert status == 0, output
    first = output.index("ab_switch sees None ['FIBSPARSE_X=0', '--kernel', 'dkdv']")
    second = output.index("ab_switch sees None ['FIBSPARSE_Y=0', '--kernel', 'dq']")
    assert first < second and output.count("build: rc=0") == 1
    log = (tmp_path / "ab.log").read_text()
    assert "  ab: rc=0" in log and "  ab2: rc=0" in log


@pytest.mark.parametrize("args, message", [
    (["--", "FIBSPARSE_X=0", "--"], "an empty group of A/B arguments"),
    (["--", "--", "FIBSPARSE_X=0"], "an empty group of A/B arguments"),
    (["--", "FIBSPARSE_X=0", "--", "--", "FIBSPARSE_Y=0"], "an empty group of A/B arguments"),
    (["--bogus"], "unknown option '--bogus'"),
    (["--check-env", "no_equals", "--", "X=0"], "--check-env takes NAME=VALUE, got 'no_equals'"),
    (["--log"], "--log needs a value"),
    (["--sanitize"], "give tools/ab_switch.py's arguments after --"),
])
def test_device_ab_refuses_bad_options_before_building(tmp_path, args, message):
    """Bad options are refused with status 2, naming what was wrong, before the build."""
    script, env = device_ab_tree(tmp_path)
    status, output = run_device_ab(script, env, *args)
    assert status == 2 and message in output and "build" not in output



def source_page(name, rows):
    """One kernel's source page as `ncu --page source --csv` prints it (a few of its columns)."""
    columns = ["Address", "Source", "Warp Stall Sampling (All Samples)", "stall_wait", "stall_mio",
               "stall_mio (Not Issued)", "L2 Theoretical Sectors Global", "L2 Theoretical Sectors Global Ideal",
               "L2 Theoretical Sectors Global Excessive"]
    lines = [f'"Kernel Name","{name}",', ",".join(f'"{c}"' for c in columns)]
    lines += [",".join(f'"{v}"' for v in row) for row in rows]
    return "\n".join(lines)


def ncu_source_summary(path, *args):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "ncu_source_summary.py"), str(path), *args],
                          capture_output=True, text=True, timeout=60)


def test_ncu_source_summary_counts_stalls_and_excess_sectors(tmp_path):
    """Shares by every stall reason (not the not-issued columns), each
    instruction's main reason ("-" without samples), the three instructions
    with the most excess sectors in order, a kernel's repeated page counted
    and not read, names with parentheses inside their parameter lists."""
    dkdv = "void dkdv<int, (fibsparse::Route)2>"
    first = source_page(f"{dkdv}(fibsparse::Params, std::integral_constant<int, (int)2>)", [
        ["0x10", "LDGSTS.E.BYPASS.128 [R1]", "30", "10", "20", "99", "24", "16", "8"],
        ["0x20", "BAR.SYNC.DEFER_BLOCKING 0x0", "10", "10", "0", "0", "", "", ""],
        ["0x30", "LDGSTS.E.BYPASS.128 [R2]", "0", "0", "0", "0", "40", "16", "24"],
        ["0x40", "LDGSTS.E.BYPASS.128 [R3]", "0", "0", "0", "0", "20", "16", "4"],
        ["0x50", "LDGSTS.E.BYPASS.128 [R4]", "0", "0", "0", "0", "18", "16", "2"]])
    repeat = source_page(f"{dkdv}(fibsparse::Params, std::integral_constant<int, (int)2>)",
                         [["0x10", "NOP", "999", "999", "0", "0", "0", "0", "0"]])
    path = tmp_path / "page.csv"
    path.write_text("\n".join([first, repeat]))
    result = ncu_source_summary(path, "--top", "5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.rstrip("\n").split("\n")
    assert lines[0] == (f"{dkdv}: 5 instructions, 40 stall samples, 37.3% of 102 global sectors in excess "
                        "(named by 2 pages; the first is read)")
    assert lines[1] == "  samples by reason: wait 50.0%, mio 50.0%"
    assert [line.split()[:2] for line in lines[3:6]] == [["75.0%", "mio"], ["25.0%", "wait"], ["0.0%", "-"]]
    assert "NOP" not in result.stdout
    assert lines[8] == "  4 instructions with excess sectors; the largest:"
    assert [line.split()[1] for line in lines[9:]] == ["[R2]", "[R1]", "[R3]"]


def test_ncu_source_summary_reads_a_profiled_page():
    """The stored source page of the head_dim 128 dk/dv pass (gzip), as its profile reports it."""
    page = ROOT / "bench" / "results" / "2026-12-03_h200_dkdv_profile_508bbae" / "dkdv_gqa128_64k_sass.csv.gz"
    result = ncu_source_summary(page, "--top", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] == ("void fibsparse::mma_bwd::dkdv_mma_kernel<c10::BFloat16, int, (int)128, "
                        "(fibsparse::mma_tiles::DkdvRoute)2>: 3384 instructions, 423249 stall samples, "
                        "33.1% of 7.798e+08 global sectors in excess")
    assert lines[1].startswith("  samples by reason: wait 31.6%, selected 19.6%, long_sb 12.6%, barrier 9.9%")
    assert lines[3].split()[:3] == ["8.4%", "barrier", "LDL"]
    assert lines[4] == "  180 instructions with excess sectors; the largest:"


def test_ncu_source_summary_refuses_a_negative_top(tmp_path):
    path = tmp_path / "page.csv"
    path.write_text(source_page("void k()", []))
    result = ncu_source_summary(path, "--top", "-1")
    assert result.returncode == 2 and "--top must be 0 or more, got -1" in result.stderr
