# The demo's sample job: searches for primes and keeps its progress only in memory (no checkpoint
# file of its own). Every 100 ms it writes "<pid> <numbers tested> <primes found> <largest>" to the
# state file given, so the demo can show where it is before the dump and after the restore.
import os, sys, time

state = sys.argv[1]
n, found, largest = 1, 0, 0
last = 0.0
while True:
    n += 1
    if all(n % d for d in range(2, int(n ** 0.5) + 1)):
        found, largest = found + 1, n
    if time.monotonic() - last >= 0.1:
        last = time.monotonic()
        with open(state + ".tmp", "w") as f:
            f.write("%d %d %d %d\n" % (os.getpid(), n, found, largest))
        os.rename(state + ".tmp", state)
        time.sleep(0.01)
