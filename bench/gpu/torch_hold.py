"""
The GPU job of bench/gpu/proof.sh: holds SIZE GiB of float32 tensors on cuda:0, filled from a fixed
seed, and computes in a loop, appending one JSON line per step to LOG (opened O_APPEND, so CRIU does
not check its size on restore):

  {"ready":1, "pid", "bytes" (tensor bytes), "reserved" (torch's device memory), "chk0", "init_s"}
  {"it": step counter, "t": wall clock, "chk": checksum of ALL held tensors, "state": sum of the
   small matrix the loop keeps multiplying, "pid"}

The checksum is exact and order-independent of the reduction: the sum, per 64 MiB chunk, of the
tensors' 32-bit patterns as int64, combined over the chunks weighted by chunk number, mod 2^61-1.
So after a restore, "chk" equal to "chk0" means every held byte is as it was; "it" going on from
where it was means the process was not restarted; "state" changing means it computes.

  python3 torch_hold.py LOG [SIZE_GIB] [--cpu-dry-run]

--cpu-dry-run (or no torch/CUDA) holds the bytes in host memory with numpy instead: for testing the
harness on a machine without a GPU.
"""
import json
import os
import sys
import time

MOD = (1 << 61) - 1
CHUNK = 16 << 20  # elements per chunk: 64 MiB of float32
SEED = 1234

args = [a for a in sys.argv[1:] if not a.startswith('--')]
log_path = args[0]
size_gib = float(args[1]) if len(args) > 1 else 8.0
cpu = '--cpu-dry-run' in sys.argv
log = open(log_path, 'a', buffering=1)


def emit(**kv):
    log.write(json.dumps(kv, separators=(',', ':')) + '\n')


t0 = time.time()
n_elems = int(size_gib * (1 << 30)) // 4
per_tensor = 1 << 28  # 1 GiB of float32 each

if not cpu:
    import torch
    dev = torch.device('cuda:0')
    gen = torch.Generator(device=dev).manual_seed(SEED)
    held = []
    left = n_elems
    while left > 0:
        n = min(per_tensor, left)
        held.append(torch.randn(n, device=dev, dtype=torch.float32, generator=gen))
        left -= n
    a = torch.randn(1024, 1024, device=dev, generator=gen) * 0.03
    w = torch.randn(1024, 1024, device=dev, generator=gen) * 0.03

    def checksum():
        sums = []
        for t in held:
            bits = t.view(torch.int32)
            for s in range(0, bits.numel(), CHUNK):
                sums.append(bits[s:s + CHUNK].to(torch.int64).sum())
        total = 0
        for j, s in enumerate(torch.stack(sums).cpu().tolist()):
            total = (total + (j + 1) * (s % MOD)) % MOD
        return '%016x' % total

    def step(a):
        a = torch.tanh(a @ w + 0.01)
        return a, float(a.sum())

else:
    import numpy as np
    rng = np.random.default_rng(SEED)
    held = [rng.standard_normal(min(per_tensor, n_elems - s), dtype=np.float32) for s in range(0, n_elems, per_tensor)]
    a = rng.standard_normal((256, 256), dtype=np.float32) * 0.06
    w = rng.standard_normal((256, 256), dtype=np.float32) * 0.06

    def checksum():
        total, j = 0, 0
        for t in held:
            bits = t.view(np.int32)
            for s in range(0, bits.size, CHUNK):
                j += 1
                total = (total + j * (int(bits[s:s + CHUNK].sum(dtype=np.int64)) % MOD)) % MOD
        return '%016x' % total

    def step(a):
        a = np.tanh(a @ w + 0.01)
        return a, float(a.sum())

chk0 = checksum()
reserved = 0 if cpu else torch.cuda.memory_reserved(dev)
emit(ready=1, pid=os.getpid(), bytes=n_elems * 4, reserved=reserved, chk0=chk0, init_s=round(time.time() - t0, 3), cpu=cpu)
it = 0
while True:
    it += 1
    a, state = step(a)
    emit(it=it, t=round(time.time(), 3), chk=checksum(), state=round(state, 6), pid=os.getpid())
    time.sleep(0.2)
