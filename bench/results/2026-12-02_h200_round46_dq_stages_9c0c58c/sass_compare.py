import re,sys
def funcs(f):
    out={}; cur=None
    for l in open(f'/tmp/c46/{f}.sass'):
        m=re.match(r'\s+Function : (\S+)',l)
        if m: cur=m.group(1); out[cur]=[]; continue
        if cur and re.search(r'/\*[0-9a-f]{4}\*/',l):
            out[cur].append(re.sub(r'/\* 0x[0-9a-f]* \*/','',l).strip())
    return out
G=funcs(sys.argv[1]); B=funcs('base'); F=funcs('f')
print(len(G),'kernels in', sys.argv[1])
same_other=0
for n in G:
    m=re.search(r'(Li\d+ELi\d+E)Li(\d)EEEv',n)
    if 'with_offsets' in n and m:
        old=n.replace(m.group(0), m.group(1)+'EEv')
        stages=m.group(2)
        ref = F if stages=='3' else B
        print(n[-58:], 'stages',stages, 'SASS-identical to', 'version E (3a0eea9)' if stages=='3' else '4dd3f4f', G[n]==ref.get(old))
    elif G[n]==B.get(n): same_other+=1
    else: print('other kernel differs from 4dd3f4f', n)
print(same_other, 'other kernels SASS-identical to 4dd3f4f')
