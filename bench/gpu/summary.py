"""
proof.sh's last step: merges its records (one JSON object a line) into results.json and prints the
summary table: each timed step, GiB/s of device memory where it moved, cedana's own figures, and
the verdicts read from the jobs' logs (logcheck.py); last, cedana's GPU timing fields (gpu.checkpointMs,
gpu.pausedMs, gpu.restoreMs) beside the same spans measured from outside (results.json: timing_fields).
Without a GPU (--cpu-dry-run) those fields are absent and print as '-'.

  python3 summary.py RES.jsonl CC-CALLS.log RESULTS.json

CC-CALLS.log: one line per cuda-checkpoint call cedana made (through proof.sh's shim): start end rc args.
"""
import json
import sys

r = {}
for line in open(sys.argv[1]):
    try:
        r.update(json.loads(line))
    except ValueError:
        pass
calls = []
try:
    for line in open(sys.argv[2]):
        f = line.split()
        if len(f) >= 4:
            calls.append({'start': float(f[0]), 'end': float(f[1]), 'rc': int(f[2]), 'args': ' '.join(f[3:])})
except OSError:
    pass
r['cedana_cc_calls'] = calls
json.dump(r, open(sys.argv[3], 'w'), indent=1)

rt, cc, job = r.get('runtime') or {}, r.get('cuda_checkpoint') or {}, r.get('jobA') or {}
gib = (job.get('reserved') or job.get('bytes') or 0) / 2**30  # the rates below: torch's reserved device memory
smi_gib = (r.get('smiA_mib') or 0) / 1024                        # nvidia-smi's figure for the process (with its context)
print('runtime: kernel %s, gVisor %s, dry run %s; cuda-checkpoint: %s (%s)' % (rt.get('kernel'), rt.get('gvisor'), rt.get('dry'), cc.get('path'), cc.get('kind')))
print('job A: %.2f GiB of tensors, torch reserved %.2f GiB, nvidia-smi %s MiB, host RSS %s KiB, start-up %s s'
      % ((job.get('bytes') or 0) / 2**30, gib, r.get('smiA_mib'), r.get('rssA_kib'), job.get('init_s')))

print('GiB/s below: torch-reserved GiB / seconds%s' % ('; x %.3f for the nvidia-smi figure' % (smi_gib / gib) if gib and smi_gib else ''))
print('\n%-18s %3s %8s %7s  %s' % ('step', 'rc', 'seconds', 'GiB/s', 'cedana reports'))
for k, j in (('cc_lock', None), ('cc_checkpoint', None), ('cc_restore', None), ('cc_unlock', None),
             ('cedana_dump', 'dumpA'), ('cedana_restore', 'restoreA'), ('cedana_dump_lr', 'dumpB'), ('cedana_restore_lr', 'restoreB')):
    if k not in r:
        continue
    s, rate, rep = r[k]['s'], '', ''
    if k in ('cc_checkpoint', 'cc_restore') or j:
        rate = '%.2f' % (gib / s) if s > 0 else ''
    d = r.get(j) if j else None
    if isinstance(d, dict):
        if d.get('ok') is False or 'error' in d:
            rep = 'ERROR %s' % json.dumps(d.get('error', d))[:300]
        else:
            rep = ' '.join('%s=%s' % (x, d[x]) for x in ('frozenMs', 'restoreMs', 'durationMs', 'memoryBytes') if x in d)
            if d.get('gpu'):
                rep += ' gpu=%s' % json.dumps(d['gpu'])
    print('%-18s %3s %8.3f %7s  %s' % (k, r[k]['rc'], s, rate, rep))

print('\n%-15s %6s %6s %7s %7s %6s %6s %5s %5s  %s' % ('job log', 'it_bef', 'it_aft', 'it_last', 'gap_s', 'period', 'chk_ok', 'comp', 'pids', 'verdict'))
lr_after = ((r.get('lr_log') or {}).get('after') or {})
for k in ('cc_log', 'dump_log', 'lr_log', 'lr_restore_log'):
    d = r.get(k)
    if not d:
        continue
    b, a, l = d.get('before') or {}, d.get('after') or {}, d.get('last') or {}
    if k == 'lr_restore_log':
        # The restored copy must write again exactly the step the original wrote right after the dump.
        good = a.get('it') == lr_after.get('it')
        how = 'goes on from the dumped step as the original did (%s): %s; same state value %s: %s' % (
            lr_after.get('it'), good, a.get('state'), a.get('state') == lr_after.get('state'))
    else:
        good = a.get('it') == (b.get('it') or -9) + 1 and a.get('pid') == b.get('pid')
        how = 'counter goes on from %s, same PID: %s' % (b.get('it'), good)
    ok = good and d.get('chk_ok') and d.get('computing') and d.get('steps_after', 0) >= 3
    print('%-15s %6s %6s %7s %7s %6s %6s %5s %5s  %s -> %s'
          % (k, b.get('it'), a.get('it'), l.get('it'), d.get('gap_s'), d.get('period_s'), d.get('chk_ok'), d.get('computing'),
             ','.join(map(str, d.get('pids') or [])), how, 'PASS' if ok else 'FAIL'))

print('\ncuda-checkpoint --action calls made by cedana, by step (seconds, GiB/s of device memory):')
for k in ('cedana_dump', 'cedana_restore', 'cedana_dump_lr', 'cedana_restore_lr'):
    if k not in r:
        continue
    w = r[k]
    mine = [c for c in calls if w['start'] <= c['start'] <= w['end'] and '--action' in c['args']]
    parts = []
    for c in mine:
        act = c['args'].split('--action ')[1].split()[0]
        s = c['end'] - c['start']
        rate = ' %.2f GiB/s' % (gib / s) if act in ('checkpoint', 'restore') and s > 0 else ''
        parts.append('%s %.3fs%s%s' % (act, s, rate, '' if c['rc'] == 0 else ' rc=%d' % c['rc']))
    print('  %-18s %s' % (k, '; '.join(parts) or '(none)'))


def span(step, first, last):
    """Seconds from the start of cedana's first `--action FIRST` call to the end of its last `--action
    LAST` call within STEP, as proof.sh's shim timed them (None where there were none)."""
    w = r.get(step)
    if not w:
        return None
    mine = [c for c in calls if w['start'] <= c['start'] <= w['end'] and '--action' in c['args']]
    act = lambda c: c['args'].split('--action ')[1].split()[0]
    f = [c['start'] for c in mine if act(c) == first]
    l = [c['end'] for c in mine if act(c) == last]
    return round(max(l) - min(f), 3) if f and l else None


def gpu_field(j, x):
    d = r.get(j)
    g = d.get('gpu') if isinstance(d, dict) else None
    return g.get(x) if isinstance(g, dict) else None


def fmt(v, scale=1.0):
    return '-' if v is None else '%.3f' % (v * scale)


# cedana's GPU timing fields (gpu.checkpointMs, gpu.pausedMs, gpu.restoreMs), each beside what
# measures the same thing from outside: the shim's times of cedana's own cuda-checkpoint calls, the
# job's longest silence in its own log (logcheck.py), and CRIU's frozenMs / restoreMs.
lr_gap = (r.get('lr_log') or {}).get('gap_s')
tf = {
    'dump': {'gpu.checkpointMs': gpu_field('dumpA', 'checkpointMs'), 'shim_lock_to_checkpoint_s': span('cedana_dump', 'lock', 'checkpoint'),
             'baseline_cc_lock_plus_checkpoint_s': round(r['cc_lock']['s'] + r['cc_checkpoint']['s'], 3) if 'cc_lock' in r and 'cc_checkpoint' in r else None,
             'frozenMs': (r.get('dumpA') or {}).get('frozenMs')},
    'restore': {'gpu.restoreMs': gpu_field('restoreA', 'restoreMs'), 'shim_restore_to_unlock_s': span('cedana_restore', 'restore', 'unlock'),
                'baseline_cc_restore_plus_unlock_s': round(r['cc_restore']['s'] + r['cc_unlock']['s'], 3) if 'cc_restore' in r and 'cc_unlock' in r else None,
                'restoreMs': (r.get('restoreA') or {}).get('restoreMs')},
    'dump_lr': {'gpu.checkpointMs': gpu_field('dumpB', 'checkpointMs'), 'gpu.pausedMs': gpu_field('dumpB', 'pausedMs'),
                'shim_lock_to_unlock_s': span('cedana_dump_lr', 'lock', 'unlock'), 'job_log_silence_s': lr_gap,
                'frozenMs': (r.get('dumpB') or {}).get('frozenMs')},
    'restore_lr': {'gpu.restoreMs': gpu_field('restoreB', 'restoreMs'), 'shim_restore_to_unlock_s': span('cedana_restore_lr', 'restore', 'unlock'),
                   'restoreMs': (r.get('restoreB') or {}).get('restoreMs')},
}
p = tf['dump_lr']['gpu.pausedMs']
tf['dump_lr']['silence_minus_pausedMs_s'] = round(lr_gap - p / 1000, 3) if p is not None and lr_gap is not None else None
r['timing_fields'] = tf
json.dump(r, open(sys.argv[3], 'w'), indent=1)

ms = lambda v: '-' if v is None else '%.3f' % (v / 1000)
print("\ncedana's GPU timing fields (seconds) beside the same span measured from outside:")
print('  %-18s %-24s %s' % ('step', 'cedana field', 'measured from outside'))
d = tf['dump']
print('  %-18s %-24s shim lock..checkpoint %s; baseline cc lock+checkpoint %s; CRIU frozenMs %s'
      % ('cedana_dump', 'gpu.checkpointMs ' + ms(d['gpu.checkpointMs']), fmt(d['shim_lock_to_checkpoint_s']), fmt(d['baseline_cc_lock_plus_checkpoint_s']), ms(d['frozenMs'])))
d = tf['restore']
print('  %-18s %-24s shim restore..unlock %s; baseline cc restore+unlock %s; CRIU restoreMs %s'
      % ('cedana_restore', 'gpu.restoreMs ' + ms(d['gpu.restoreMs']), fmt(d['shim_restore_to_unlock_s']), fmt(d['baseline_cc_restore_plus_unlock_s']), ms(d['restoreMs'])))
d = tf['dump_lr']
print('  %-18s %-24s job log silence %s (silence - pausedMs %s); shim lock..unlock %s; CRIU frozenMs %s; gpu.checkpointMs %s'
      % ('cedana_dump_lr', 'gpu.pausedMs ' + ms(d['gpu.pausedMs']), fmt(d['job_log_silence_s']), fmt(d['silence_minus_pausedMs_s']),
         fmt(d['shim_lock_to_unlock_s']), ms(d['frozenMs']), ms(d['gpu.checkpointMs'])))
d = tf['restore_lr']
print('  %-18s %-24s shim restore..unlock %s; CRIU restoreMs %s'
      % ('cedana_restore_lr', 'gpu.restoreMs ' + ms(d['gpu.restoreMs']), fmt(d['shim_restore_to_unlock_s']), ms(d['restoreMs'])))
if p is None and not (r.get('runtime') or {}).get('dry'):
    print('  (no gpu.pausedMs in the --leave-running dump\'s result)')
