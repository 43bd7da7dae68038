"""
Reads torch_hold.py's log around one operation that began at wall-clock time SINCE (seconds):

  python3 logcheck.py LOG SINCE

prints one JSON object: chk0 (the checksum at start); before and after, the two consecutive steps,
from the last one written before SINCE on, between which the program wrote nothing for longest (the
interruption; for a restore from an older image, the killed process's last step and the restored
one's first); gap_s (after.t - before.t); period_s (the median time between steps, for comparison);
last (the newest step); chk_ok (every step from before on has chk == chk0); steps_after (steps from
after on); computing ("state" took more than one value from after on); pids (who wrote those).
"""
import json
import statistics
import sys

path, since = sys.argv[1], float(sys.argv[2])
chk0, steps = None, []
with open(path) as f:
    for line in f:
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if 'chk0' in d:
            chk0 = d['chk0']
        elif 'it' in d:
            steps.append(d)

pick = lambda d: d and {k: d[k] for k in ('it', 't', 'chk', 'state', 'pid')}
i0 = max([i for i, d in enumerate(steps) if d['t'] < since] or [0])
pairs = [(steps[i + 1]['t'] - steps[i]['t'], i) for i in range(i0, len(steps) - 1)]
i = max(pairs)[1] if pairs else None
before, after = (steps[i], steps[i + 1]) if i is not None else (None, None)
tail = steps[i + 1:] if i is not None else []
dts = [b['t'] - a['t'] for a, b in zip(steps, steps[1:]) if b['t'] > a['t']]
print(json.dumps({
    'chk0': chk0,
    'before': pick(before),
    'after': pick(after),
    'last': pick(steps[-1] if steps else None),
    'gap_s': round(after['t'] - before['t'], 3) if after else None,
    'period_s': round(statistics.median(dts), 3) if dts else None,
    'chk_ok': bool(chk0) and bool(steps) and all(d['chk'] == chk0 for d in steps[i0:]),
    'steps_after': len(tail),
    'computing': len({d['state'] for d in tail}) > 1,
    'pids': sorted({d['pid'] for d in tail}),
}))
