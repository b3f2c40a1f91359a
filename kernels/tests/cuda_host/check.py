"""Builds harness.cpp (kernels.cu on the host) and compares its leaves with the reference script."""
import sys, subprocess, importlib.util, hashlib, os, tempfile
here = os.path.dirname(os.path.abspath(__file__))
exe = os.path.join(tempfile.mkdtemp(), "harness")
subprocess.run(["g++", "-std=c++20", "-O2", "-w", "-o", exe, os.path.join(here, "harness.cpp")], check=True, cwd=here)
ref_path = os.environ.get("CPC_SYNTHETIC_REF", os.path.join(here, "../../../../shared/spec/synthetic_ref.py"))
spec = importlib.util.spec_from_file_location("ref", ref_path); ref = importlib.util.module_from_spec(spec); spec.loader.exec_module(ref)
import numpy as np
fails = 0
for (seed, n, r0, r1, it, dp4a) in [("s1",1,0,1,0,0),("s2",3,1,3,0,1),("abc",17,0,17,0,0),("x",33,5,30,1,1),("y",64,0,64,0,0),("z",65,60,65,0,0),("w",100,0,100,1,0),("v",131,7,99,0,1),("p",14,0,14,0,0),("q",15,2,15,0,0),("r",30,0,30,0,0),("t",47,3,40,2,0),("u",78,0,78,0,1)]:
    (k0,k1),s = ref.key_material(seed)
    out = subprocess.run([exe,str(n),str(r0),str(r1),str(k0),str(k1),str(s),str(2*it),str(2*it+1),str(dp4a)],capture_output=True,text=True,check=True).stdout.split()
    c = ref.product(seed, n, it)
    want = [hashlib.sha256(c[r].tobytes()).hexdigest() for r in range(r0,r1)]
    ok = out == want
    fails += not ok
    print(seed, n, r0, r1, it, "dp4a" if dp4a else "plain", "OK" if ok else "MISMATCH")
sys.exit(1 if fails else 0)
