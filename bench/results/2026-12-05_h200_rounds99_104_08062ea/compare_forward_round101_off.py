import os, re, sys, tempfile, subprocess
sys.path.insert(0, '/work/main/tools')
import compare_sass as cs
home = cs.cuda_home(); nvcc = os.path.join(home, 'bin', 'nvcc'); dump = cs.cuobjdump(home)
scratch = '/tmp/fwdcmp/scratch'; os.makedirs(scratch, exist_ok=True)
inc = cs.include_flags(home, tempfile.mkdtemp())
res = {}
for tag, tree in (('A', '/tmp/treeA'), ('B', '/tmp/treeB')):
    out = os.path.join(scratch, tag); os.makedirs(out, exist_ok=True)
    for f in ('fwd_bf16', 'fwd_fp16'):
        cubin = os.path.join(out, f + '.cubin')
        if not os.path.exists(cubin):
            subprocess.run([nvcc, '-O3', '--expt-relaxed-constexpr', '-std=c++20', '-gencode', 'arch=compute_90a,code=sm_90a', '-cubin',
                            '-DFIBSPARSE_WITH_CUDA', '-DFIBSPARSE_HOPPER_KERNELS', *inc, os.path.join(tree, 'csrc/cuda', f + '.cu'), '-o', cubin], check=True)
        res[(tag, f)] = cs.kernels(cubin, dump, False)
same = total = 0
for f in ('fwd_bf16', 'fwd_fp16'):
    a, b = res[('A', f)], res[('B', f)]
    # round 101's extra template argument at the end of fwd_hopper_kernel: keep its `false` side, drop the argument
    mapped = {}
    for name, code in a.items():
        m = re.match(r'(.*fwd_hopper_kernel<)([^>]*)(>.*)', name)
        if m:
            args = m.group(2).split(', ')
            if len(args) == 8:
                if args[-1] != 'false':
                    continue
                name = m.group(1) + ', '.join(args[:-1]) + m.group(3)
        mapped[name] = code
    for name, code in b.items():
        total += 1
        if mapped.get(name) == code:
            same += 1
        else:
            print(f, name[:120], 'missing' if name not in mapped else f'differs {len(mapped[name])} -> {len(code)}')
print(f'identical: {same} of {total} kernels of the landed forward (08062ea with round 101 switched off, mapped by name)')
