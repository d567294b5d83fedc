"""Nsight Compute's per-instruction samples of a kernel, by the source line they come from.

ncu's source page here is SASS only (`--print-source sass`), in the listing's order. The same
kernel compiled locally with nvcc 13.0 and `-lineinfo` gives the same SASS (checked: every opcode
matches, row for row) with each instruction's line and the lines it was inlined at, from
`nvdisasm -gi -c`. This joins the two and sums stall samples and executed instructions:

    nvcc <the extension's flags> -lineinfo -cubin -o bwd_bf16.cubin csrc/cuda/bwd_bf16.cu
    nvdisasm -gi -c bwd_bf16.cubin > bwd_bf16.sass
    python3 source_lines.py bwd_bf16.sass MANGLED_KERNEL_NAME KERNEL_sass.csv.gz FILE FIRST LAST [SUB_FIRST SUB_LAST]

Each instruction goes to the outermost line of FILE between FIRST and LAST in its inlining chain
(the kernel's body); with SUB_FIRST and SUB_LAST, an instruction inside that range of FILE (a
function the body calls) goes to its line there instead.
"""
import collections
import csv
import gzip
import re
import sys


def sass_with_lines(path, mangled):
    """(address, instruction, [(file, line), innermost first]) for each instruction of the kernel."""
    text = open(path).read().split("\n")
    start = next(i for i, line in enumerate(text) if line.startswith(".text." + mangled + ":"))
    instructions, chain, last_was_instruction = [], [], True
    for line in text[start + 1:]:
        if line.startswith(".text.") or line.lstrip().startswith(".section"):
            break
        location = re.match(r'\s*//## File "([^"]+)", line (\d+)', line)
        if location:
            if last_was_instruction:
                chain = []
            last_was_instruction = False
            chain.append((location.group(1).split("/")[-1], int(location.group(2))))
            continue
        instruction = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if instruction:
            instructions.append((int(instruction.group(1), 16), instruction.group(2).strip(), list(chain)))
            last_was_instruction = True
    return instructions


def profiled(path):
    """(instruction, stall samples, executed instructions) for each row of ncu's source page."""
    rows = list(csv.reader(gzip.open(path, "rt")))
    header = rows[1]
    column = {name: header.index(name) for name in header}

    def number(row, name):
        try:
            return float(row[column[name]])
        except ValueError:
            return 0.0

    return [(row[column["Source"]].strip(), number(row, "Warp Stall Sampling (All Samples)"),
             number(row, "Instructions Executed")) for row in rows[2:] if len(row) >= len(header)]


def opcode(instruction):
    words = instruction.split()
    return words[1] if words[0].startswith("@") else words[0]


def main():
    sass, mangled, csv_path, source, first, last = sys.argv[1:7]
    first, last = int(first), int(last)
    sub = (int(sys.argv[7]), int(sys.argv[8])) if len(sys.argv) > 8 else None
    instructions, rows = sass_with_lines(sass, mangled), profiled(csv_path)
    if len(instructions) != len(rows) or any(opcode(a[1]) != opcode(b[0]) for a, b in zip(instructions, rows)):
        sys.exit("the local SASS is not the profiled kernel's")
    by_line = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for (_, _, chain), (_, samples, executed) in zip(instructions, rows):
        line = None
        for name, number in chain:
            if name == source and first <= number <= last:
                line = number
        if sub:
            for name, number in chain:
                if name == source and sub[0] <= number <= sub[1]:
                    line = number
        entry = by_line[line]
        entry[0] += 1
        entry[1] += samples
        entry[2] += executed
    all_samples = sum(entry[1] for entry in by_line.values())
    all_executed = sum(entry[2] for entry in by_line.values())
    print(f"{len(instructions)} instructions, {all_samples:.0f} samples, {all_executed / 1e6:.1f}M executed")
    print(f"{'line':>6s} {'static':>7s} {'samples':>8s} {'executed':>9s}")
    for line, (static, samples, executed) in sorted(by_line.items(), key=lambda item: (item[0] is None, item[0] or 0)):
        print(f"{str(line):>6s} {static:7d} {samples / all_samples:8.1%} {executed / all_executed:9.1%}")


if __name__ == "__main__":
    main()
