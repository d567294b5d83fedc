# The forward kernels of round 105's tree (B) against the main line's (A): B's Hopper forward has one more
# template argument (kMixedStrips); its `false` instantiations must be A's kernels, bit for bit in SASS.
# The two trees: git archive d64-dq-padded | tar -x -C /tmp/tree_main, and round105-mixed-strips into
# /tmp/tree_round105 (each with build/cuda_library_headers as tools/compare_sass.py wants).
import os, re, sys, tempfile, subprocess
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', '..', 'tools'))
import compare_sass as cs
home = cs.cuda_home(); nvcc = os.path.join(home, 'bin', 'nvcc'); dump = cs.cuobjdump(home)
scratch = '/tmp/fwdcmp105'; os.makedirs(scratch, exist_ok=True)
inc = cs.include_flags(home, tempfile.mkdtemp())
res = {}
for tag, tree in (('A', '/tmp/tree_main'), ('B', '/tmp/tree_round105')):
    out = os.path.join(scratch, tag); os.makedirs(out, exist_ok=True)
    for f in ('fwd_bf16', 'fwd_fp16'):
        cubin = os.path.join(out, f + '.cubin')
        if not os.path.exists(cubin):
            subprocess.run([nvcc, '-O3', '--expt-relaxed-constexpr', '-std=c++20', '-gencode', 'arch=compute_90a,code=sm_90a', '-cubin',
                            '-DFIBSPARSE_WITH_CUDA', '-DFIBSPARSE_HOPPER_KERNELS', *inc, os.path.join(tree, 'csrc/cuda', f + '.cu'), '-o', cubin], check=True)
        res[(tag, f)] = cs.kernels(cubin, dump, False)
same = total = new = 0
for f in ('fwd_bf16', 'fwd_fp16'):
    a, b = res[('A', f)], res[('B', f)]
    for name, code in b.items():
        m = re.match(r'(.*fwd_hopper_kernel<)([^>]*)(>.*)', name)
        if m:
            args = m.group(2).split(', ')
            if args[-1] == 'true':
                new += 1
                print(f, 'new (mixed strips):', ', '.join(args))
                continue
            name = m.group(1) + ', '.join(args[:-1]) + m.group(3)
        total += 1
        if a.get(name) == code:
            same += 1
        else:
            print(f, name[:140], 'missing' if name not in a else f'differs {len(a[name])} -> {len(code)}')
print(f'identical: {same} of {total} forward kernels of round 105 without mixing (mapped by name); {new} mixing kernels new')
