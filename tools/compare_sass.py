"""Do two source trees compile to the same GPU code? Builds every CUDA kernel
file of each tree (csrc/cuda/*.cu) to an sm_90a cubin with nvcc (the Hopper
forward included), then compares the SASS of each kernel (cuobjdump -sass),
addresses stripped. Needs nvcc, not a GPU: the check a restructuring that should
change nothing can run anywhere.

    python tools/compare_sass.py BEFORE_TREE AFTER_TREE [--params-moved] [--new-argument KERNEL=VALUE ...]

BEFORE_TREE and AFTER_TREE are folders holding a source tree (e.g. `git archive
COMMIT | tar -x -C DIR`). --params-moved also ignores the offsets of Params
fields in the constant bank, for changes that add or remove a field. Kernels
are matched by name, with the lane-group kernels' `lane_` prefix ignored.
--new-argument KERNEL=VALUE: AFTER_TREE's KERNEL (a kernel's name, e.g.
fwd_hopper_kernel) takes one more template argument, last; its instantiations
with VALUE there are matched with BEFORE_TREE's without it, and those with
another value are new kernels (a switch's new side, say).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import difflib
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile


def cuda_home() -> str:
    nvcc = shutil.which("nvcc")
    for home in (os.environ.get("CUDA_HOME"), os.path.dirname(os.path.dirname(nvcc)) if nvcc else None,
                 "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return home
    sys.exit("compare_sass: no nvcc found (set CUDA_HOME)")


def cuobjdump(home: str) -> str:
    candidates = [os.path.join(home, "bin", "cuobjdump"), shutil.which("cuobjdump") or ""]
    try:  # triton's wheels ship one when the toolkit has only the compiler
        import triton
        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    for path in candidates:
        if path and os.path.exists(path):
            return path
    sys.exit("compare_sass: no cuobjdump found")


def include_flags(home: str, scratch: str) -> list[str]:
    """torch's headers, the toolkit's, and the library headers (cuSPARSE, ...)
    of the nvidia-* wheels where the toolkit lacks them (as setup.py does)."""
    from torch.utils.cpp_extension import include_paths
    dirs = include_paths() + [sysconfig.get_paths()["include"], os.path.join(home, "include")]
    try:
        import nvidia
        links = os.path.join(scratch, "library_headers")
        os.makedirs(links)
        for header in glob.glob(os.path.join(nvidia.__path__[0], "*", "include", "*")):
            name = os.path.basename(header)
            if not os.path.exists(os.path.join(home, "include", name)) and not os.path.lexists(os.path.join(links, name)):
                os.symlink(header, os.path.join(links, name))
        dirs.append(links)
    except ImportError:
        pass
    return [f"-I{d}" for d in dirs]


def compile_tree(tree: str, out: str, nvcc: str, includes: list[str]) -> list[str]:
    sources = [s for s in sorted(glob.glob(os.path.join(tree, "csrc", "cuda", "*.cu")))
               if os.path.basename(s) != "dispatch.cu"]  # host code only
    os.makedirs(out, exist_ok=True)

    def build(source: str) -> str:
        cubin = os.path.join(out, os.path.basename(source)[:-3] + ".cubin")
        command = [nvcc, "-O3", "--expt-relaxed-constexpr", "-std=c++20", "-gencode", "arch=compute_90a,code=sm_90a",
                   "-cubin", "-DFIBSPARSE_WITH_CUDA", "-DFIBSPARSE_HOPPER_KERNELS", *includes, source, "-o", cubin]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"compare_sass: nvcc failed on {source}:\n{result.stderr[-3000:]}")
        return cubin

    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(build, sources))


def kernels(cubin: str, dump: str, params_moved: bool) -> dict[str, list[str]]:
    """Kernel name -> its SASS instructions, addresses of jumps stripped."""
    text = subprocess.run([dump, "-sass", cubin], capture_output=True, text=True, check=True).stdout
    found: dict[str, list[str]] = {}
    name = None
    for line in text.splitlines():
        header = re.search(r"Function : (\S+)", line)
        if header:
            demangled = subprocess.run(["c++filt", header.group(1)], capture_output=True, text=True).stdout.strip()
            name = demangled.replace("lane_", "")
            found[name] = []
            continue
        instruction = re.match(r"\s+/\*[0-9a-f]{4,}\*/\s+(.*?);", line)  # 5+ hex digits past 4096 instructions
        if name and instruction:
            text_of = instruction.group(1)
            if re.search(r"\b(BRA|CALL|BSSY|JMP)\b", text_of):
                text_of = re.sub(r"0x[0-9a-f]+", "ADDR", text_of)
            if params_moved:
                text_of = re.sub(r"c\[0x0\]\[0x[0-9a-f]+\]", "c[PARAM]", text_of)
            found[name].append(text_of)
    return found


def without_new_argument(name: str, new_arguments: dict[str, str]) -> str:
    """A kernel's name as the tree before names it: where `new_arguments`
    maps the kernel to the value of a template argument it gained at the end,
    an instantiation with that value loses it; other names are unchanged."""
    for kernel, value in new_arguments.items():
        # The kernel's own name (not a longer one that ends with it), then
        # its template arguments up to the parameter list.
        found = re.search(rf"(?<!\w){kernel}<(?P<arguments>.*?)>\(", name)
        if found is None:
            continue
        opening, closing = found.start("arguments"), found.end("arguments")
        arguments = name[opening:closing].split(", ")
        if arguments[-1] == value:
            return name[:opening] + ", ".join(arguments[:-1]) + name[closing:]
    return name


def parse_new_argument(text: str) -> tuple[str, str]:
    kernel, sep, value = text.partition("=")
    if not sep or not kernel or not value or not re.fullmatch(r"\w+", kernel):
        raise argparse.ArgumentTypeError(f"--new-argument takes KERNEL=VALUE (a kernel's name), got '{text}'")
    return kernel, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--params-moved", action="store_true", help="ignore Params offsets in the constant bank")
    parser.add_argument("--new-argument", type=parse_new_argument, action="append", default=[],
                        metavar="KERNEL=VALUE",
                        help="AFTER's KERNEL gained a last template argument: match its VALUE instantiations")
    args = parser.parse_args()
    new_arguments = dict(args.new_argument)
    for tree in (args.before, args.after):
        if not os.path.isdir(os.path.join(tree, "csrc", "cuda")):
            parser.error(f"{tree} holds no csrc/cuda folder")
    home = cuda_home()
    nvcc, dump = os.path.join(home, "bin", "nvcc"), cuobjdump(home)
    with tempfile.TemporaryDirectory() as scratch:
        includes = include_flags(home, scratch)
        print(f"compiling {args.before} and {args.after} for sm_90a ...", flush=True)
        before = compile_tree(args.before, os.path.join(scratch, "before"), nvcc, includes)
        after = compile_tree(args.after, os.path.join(scratch, "after"), nvcc, includes)
        after_by_file = {os.path.basename(c): c for c in after}
        same = total = 0
        for cubin in before:
            file = os.path.basename(cubin)
            if file not in after_by_file:
                print(f"{file}: not in {args.after}")
                continue
            old = kernels(cubin, dump, args.params_moved)
            new = {without_new_argument(name, new_arguments): code
                   for name, code in kernels(after_by_file[file], dump, args.params_moved).items()}
            for name, code in old.items():
                total += 1
                if new.get(name) == code:
                    same += 1
                elif name not in new:
                    print(f"{file}: {name}: not in {args.after}")
                else:
                    changed = [l for l in difflib.unified_diff(code, new[name], lineterm="", n=0)
                               if l[:1] in "+-" and not l.startswith(("+++", "---"))]
                    print(f"{file}: {name}: {len(code)} -> {len(new[name])} instructions, "
                          f"{len(changed)} lines differ, e.g. {changed[:2]}")
            for name in new.keys() - old.keys():
                print(f"{file}: {name}: not in {args.before}")
        for file in after_by_file.keys() - {os.path.basename(c) for c in before}:
            print(f"{file}: not in {args.before}")
        print(f"identical: {same} of {total} kernels")


if __name__ == "__main__":
    main()
