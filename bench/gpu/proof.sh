#!/bin/bash
# The real-GPU proof of cedana's GPU path (issue 16); docs/gpu-proof.md has the results.
# Runs on the GPU machine, from the repository root, as root:
#
#   bench/gpu/proof.sh [SIZE_GIB]                # default 8 GiB of tensors on cuda:0
#   bench/gpu/proof.sh --cpu-dry-run [SIZE_GIB]  # no GPU: the same harness on a numpy job
#
# It needs .gpu-proof/prefix.tar.xz (made by bench/gpu/pack.sh): Node 20, cedana (dist and production
# node_modules), CRIU 4.2.1, iptables and a minimal cuda-checkpoint, with their own loader and
# libraries, unpacked to /tmp/gpu-proof. Steps, each under `timeout`:
#   1. facts: kernel (gVisor reports 4.4.0: no CRIU there), driver, cuda-checkpoint, criu check;
#   2. job A (torch_hold.py): cuda-checkpoint alone, lock/checkpoint/restore/unlock, timed;
#   3. job A: cedana dump (the job ends), cedana restore; its log must go on, checksum unchanged;
#   4. job B: cedana dump --leave-running (it goes on), B killed, cedana restore of that image.
# cedana calls cuda-checkpoint through a shim that logs each call's times (cc-calls in log.txt).
# Writes $OUT/log.txt (everything, the summary table last), results.json, A.log and B.log (the
# jobs' own logs), jobs.out (their stderr) and kept-logs.tar.gz (CRIU logs cedana kept on failure).
set -u -o pipefail

DRY=0 SIZE=8
for a in "$@"; do case $a in --cpu-dry-run) DRY=1 ;; *) SIZE=$a ;; esac; done
REPO=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-/tmp/gpu-proof-out}
P=/tmp/gpu-proof          # the unpacked prefix (its binaries name this path as their loader)
W=/tmp/gpu-proof-work     # job logs, records
IMG=/nonexistent
mkdir -p "$OUT"; rm -rf "$W"; mkdir -p "$W"
exec 3>&1 4>&2 > >(tee -a "$OUT/log.txt") 2>&1
TEE=$!
export CEDANA_LOG_DIR=$W/kept-logs PYTHONUNBUFFERED=1
JOBS=() T0=$(date +%s)

now() { date +%s.%N; }
res() { printf '{"%s":%s}\n' "$1" "$2" >>"$W/res.jsonl"; }   # KEY JSON
note() { echo "## [$(( $(date +%s) - T0 ))s, uptime $(cut -d' ' -f1 /proc/uptime)] $*"; }
# t_run NAME TIMEOUT_S STDOUT_FILE|- CMD...: runs CMD under timeout, records rc, seconds, start, end;
# a step that times out ends the run (the summary still comes).
t_run() {
  local name=$1 to=$2 out=$3; shift 3
  T_START=$(now)
  if [ "$out" = - ]; then timeout -k 5 "$to" "$@"; else timeout -k 5 "$to" "$@" >"$out"; fi
  RC=$?; T_END=$(now)
  ELAPSED=$(awk "BEGIN{printf \"%.3f\", $T_END-$T_START}")
  note "$name: rc=$RC ${ELAPSED}s"
  res "$name" "{\"rc\":$RC,\"s\":$ELAPSED,\"start\":$T_START,\"end\":$T_END}"
  case $RC in 124 | 137) note "$name timed out: stopping here"; exit 1 ;; esac
}
unxz_to() {   # FILE.xz DEST (xz, else Python's lzma)
  if command -v xz >/dev/null; then xz -dc "$1" >"$2"
  else python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]),open(sys.argv[2],"wb"))' "$1" "$2"; fi
}
logcheck() { python3 "$REPO/bench/gpu/logcheck.py" "$@"; }
alive() { [ -d "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
wait_gone() { local i; for i in $(seq 1 150); do alive "$1" || return 0; sleep 0.1; done; return 1; }
smi_mib() { nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null | awk -F', *' -v p="$1" '$1==p{print $2}'; }
rss_kib() { awk '/^VmRSS/{print $2}' "/proc/$1/status" 2>/dev/null; }
start_job() {   # NAME VAR: torch_hold.py in its own session, detached, a child of this shell
  # (which reaps it when it ends, so its PID is free for the restore); its PID goes into VAR. It
  # holds no descriptor of ours (3 and 4 are this script's saved stdout/stderr): only its own files.
  (cd "$W" && exec setsid python3 "$REPO/bench/gpu/torch_hold.py" "$W/$1.log" "$SIZE" $([ $DRY = 1 ] && echo --cpu-dry-run) </dev/null >>"$W/$1.out" 2>&1 3>&- 4>&-) &
  eval "$2=$!"; JOBS+=("$!")
}
wait_ready() {  # NAME PID
  local i; for i in $(seq 1 750); do
    grep -q '"ready"' "$W/$1.log" 2>/dev/null && grep -q '"it"' "$W/$1.log" && return 0
    alive "$2" || break; sleep 0.2
  done
  note "job $1 (PID $2) not ready:"; tail -20 "$W/$1.out"; return 1
}
budget() { [ $(( $(date +%s) - T0 )) -lt "$1" ] || { note "over ${1}s: skipping the rest"; exit 1; }; }
finish() {
  trap - EXIT
  for p in "${JOBS[@]}"; do kill -9 "$p" 2>/dev/null; done
  rm -rf "$IMG"
  cp "$W"/A.log "$W"/B.log "$OUT"/ 2>/dev/null
  cat "$W"/*.out >"$OUT/jobs.out" 2>/dev/null
  [ -f "$W/kept-logs-manual-dump.log" ] && mkdir -p "$W/kept-logs" && mv "$W/kept-logs-manual-dump.log" "$W/kept-logs/manual-dump.log"
  [ -d "$W/kept-logs" ] && tar -czf "$OUT/kept-logs.tar.gz" -C "$W" kept-logs
  sleep 1
  note "kernel messages of the driver: count, per second of uptime, the first and the last"
  dmesg 2>/dev/null | grep -iE 'nvrm|nvidia|xid|criu' >"$W/dmesg.txt"
  wc -l <"$W/dmesg.txt"; awk -F'[][.]' '{print $2+0}' "$W/dmesg.txt" | uniq -c | head -20
  head -4 "$W/dmesg.txt"; tail -3 "$W/dmesg.txt"
  note "cuda-checkpoint calls made by cedana (start end rc args)"; cat "$W/cc-calls.log" 2>/dev/null
  note "summary"
  for f in dumpA restoreA dumpB restoreB; do
    [ -s "$W/$f.json" ] && res "$f" "$(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$W/$f.json" 2>/dev/null || echo null)"
  done
  python3 "$REPO/bench/gpu/summary.py" "$W/res.jsonl" "$W/cc-calls.log" "$OUT/results.json"
  exec 1>&3 2>&4; wait "$TEE" 2>/dev/null   # all of the log written before this script ends
}
trap finish EXIT
trap 'exit 143' TERM INT

note "facts"
uname -a; grep -E '^(PRETTY_NAME|VERSION_ID)=' /etc/os-release; ldd --version | head -1
echo "cpus $(nproc)"; free -g | head -2; df -h / /tmp /dev/shm | sed 1d; grep CapEff /proc/self/status
GVISOR=0; case $(uname -r) in 4.4.0*) GVISOR=1 ;; esac
dmesg 2>/dev/null | head -2
res runtime "{\"kernel\":\"$(uname -r)\",\"gvisor\":$GVISOR,\"dry\":$DRY,\"size_gib\":$SIZE}"
[ -d /usr/local/nvidia/bin ] && export PATH=$PATH:/usr/local/nvidia/bin
if [ $DRY = 0 ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,persistence_mode --format=csv
  head -1 /proc/driver/nvidia/version 2>/dev/null
  ls /usr/local/nvidia/bin
fi
for t in cuda-checkpoint nvidia-smi iptables nft xz gcc nvcc python3 tar nsenter ss; do printf '%s=%s ' $t "$(command -v $t)"; done; echo

note "unpacking .gpu-proof"
rm -rf "$P" && unxz_to "$REPO/.gpu-proof/prefix.tar.xz" /tmp/gpu-proof.tar && tar -xf /tmp/gpu-proof.tar -C /tmp && rm -f /tmp/gpu-proof.tar || { note "unpack failed"; exit 1; }
export PATH=$P/bin:$PATH   # criu (and node)
if ! command -v iptables >/dev/null && ! command -v nft >/dev/null; then
  export PATH=$PATH:$P/xbin XTABLES_LIBDIR=$P/xtables; note "using the carried iptables"
fi
# cuda-checkpoint: this machine's; else NVIDIA's published one (github.com/NVIDIA/cuda-checkpoint, a
# small loader whose work is done by the driver's libcuda), if pack.sh carried it; else ours.
CC=$(command -v cuda-checkpoint) CC_KIND=machine
if [ -z "$CC" ] && [ $DRY = 0 ]; then
  if [ -x "$P/bin/cuda-checkpoint-nv" ] && "$P/bin/cuda-checkpoint-nv" --help >/dev/null 2>&1; then
    CC=$P/bin/cuda-checkpoint-nv CC_KIND=nvidia-github
  else
    CC=$P/bin/cuda-checkpoint-min CC_KIND=minimal
  fi
  note "no cuda-checkpoint on this machine: using $CC ($CC_KIND)"
fi
res cuda_checkpoint "{\"path\":\"$CC\",\"kind\":\"$CC_KIND\"}"
CCW=()   # cedana's --cuda-checkpoint: a shim that times each call
if [ -n "$CC" ]; then
  mkdir -p "$P/ccwrap"
  printf '#!/bin/bash\ns=$(date +%%s.%%N); "%s" "$@"; rc=$?\necho "$s $(date +%%s.%%N) $rc $*" >>"%s"; exit $rc\n' "$CC" "$W/cc-calls.log" >"$P/ccwrap/cuda-checkpoint"
  chmod +x "$P/ccwrap/cuda-checkpoint"; CCW=(--cuda-checkpoint "$P/ccwrap/cuda-checkpoint")
  "$CC" --help 2>&1 | head -40
fi
CEDANA=("$P/bin/node" "$P/cedana/bin/cedana")
node --version; criu --version | head -1
timeout 60 criu check; note "criu check rc=$?"
timeout 120 "${CEDANA[@]}" check --json "${CCW[@]}"; echo; note "cedana check rc=$?"
[ $DRY = 0 ] && python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'

IMG=/dev/shm/gpu-proof-img
need_kib=$(awk "BEGIN{printf \"%d\", ($SIZE*1.5+8)*1048576}")
[ "$(df -k --output=avail /dev/shm | tail -1)" -gt "$need_kib" ] || IMG=/tmp/gpu-proof-img
rm -rf "$IMG"; mkdir -p "$IMG"; note "images in $IMG"

note "starting jobs A and B ($SIZE GiB each)"
start_job A A; start_job B B
wait_ready A "$A" && wait_ready B "$B" || exit 1
head -1 "$W/A.log"; head -1 "$W/B.log"
X=$(smi_mib "$A"); res smiA_mib "${X:-null}"; Y=$(rss_kib "$A"); res rssA_kib "${Y:-null}"
note "A: PID $A, nvidia-smi ${X:-?} MiB, host RSS ${Y:-?} KiB; B: PID $B"
res jobA "$(head -1 "$W/A.log")"

if [ $DRY = 0 ] && [ -n "$CC" ]; then
  note "baseline: cuda-checkpoint alone on job A"
  sleep 1
  for act in lock checkpoint restore unlock; do
    t_run "cc_$act" 120 - "$CC" --action "$act" --pid "$A"
    eval "CC_${act}_START=$T_START"
    echo "   state $("$CC" --get-state --pid "$A" 2>&1), nvidia-smi $(smi_mib "$A") MiB, host RSS $(rss_kib "$A") KiB," \
      "/dev/nvidia* fds $(ls -l "/proc/$A/fd" 2>/dev/null | grep -c /dev/nvidia), mappings $(grep -c /dev/nvidia "/proc/$A/maps")"
    [ $RC = 0 ] || { note "cuda-checkpoint --action $act failed"; break; }
  done
  sleep 3
  res cc_log "$(logcheck "$W/A.log" "$CC_lock_START")"; tail -1 "$W/res.jsonl"
fi

[ $GVISOR = 1 ] && { note "gVisor: no CRIU here, cedana's dump and restore are skipped"; exit 0; }

budget 330
note "cedana dump of job A (it ends), then cedana restore"
t_run cedana_dump 150 "$W/dumpA.json" "${CEDANA[@]}" dump "$A" -o "$IMG/a" --no-ship-files --json "${CCW[@]}"
DUMP_START=$T_START; cat "$W/dumpA.json"; echo
if [ "$RC" != 0 ] && alive "$A" && [ -n "$CC" ]; then
  # Diagnosis: the same by hand (cuda-checkpoint, then plain CRIU leaving it running), CRIU's log.
  note "cedana dump failed: trying cuda-checkpoint + plain criu dump --leave-running by hand"
  grep -E '^(Threads|VmRSS)' "/proc/$A/status"; ls -l "/proc/$A/fd" | awk '{print $NF}' | sort | uniq -c | sort -rn | head
  for act in lock checkpoint; do timeout 120 "$CC" --action "$act" --pid "$A"; done
  mkdir -p "$IMG/manual"; t_run criu_manual_dump 120 - criu dump -t "$A" -D "$IMG/manual" -o dump.log -v4 --leave-running
  grep -E 'Error|Warn' "$IMG/manual/dump.log" | tail -15; cp "$IMG/manual/dump.log" "$W/kept-logs-manual-dump.log" 2>/dev/null
  for act in restore unlock; do timeout 120 "$CC" --action "$act" --pid "$A"; done
  rm -rf "$IMG/manual"
fi
wait_gone "$A" && note "A ended" || note "A still runs after the dump"
du -sh "$IMG/a" 2>/dev/null
if [ -d "$IMG/a" ]; then
  t_run cedana_restore 150 "$W/restoreA.json" "${CEDANA[@]}" restore "$IMG/a" --pid-wait 30000 --json "${CCW[@]}"
  cat "$W/restoreA.json"; echo
  sleep 4
  alive "$A" && note "A (PID $A) runs: nvidia-smi $(smi_mib "$A") MiB, host RSS $(rss_kib "$A") KiB" || note "A does not run after the restore"
  res dump_log "$(logcheck "$W/A.log" "$DUMP_START")"; tail -1 "$W/res.jsonl"
  rm -rf "$IMG/a"
fi

budget 420
note "cedana dump --leave-running of job B, then B killed and its image restored"
t_run cedana_dump_lr 150 "$W/dumpB.json" "${CEDANA[@]}" dump "$B" -o "$IMG/b" --leave-running --no-ship-files --json "${CCW[@]}"
LR_START=$T_START; cat "$W/dumpB.json"; echo
sleep 3
alive "$B" && note "B runs on (PID $B): nvidia-smi $(smi_mib "$B") MiB" || note "B died after the leave-running dump"
res lr_log "$(logcheck "$W/B.log" "$LR_START")"; tail -1 "$W/res.jsonl"
if [ -d "$IMG/b" ]; then
  note "killing B"; kill -9 "$B"; wait_gone "$B" || note "B not gone"; note "B gone"
  sleep 1
  t_run cedana_restore_lr 150 "$W/restoreB.json" "${CEDANA[@]}" restore "$IMG/b" --pid-wait 30000 --json "${CCW[@]}"
  cat "$W/restoreB.json"; echo
  sleep 4
  alive "$B" && note "B (PID $B) runs again: nvidia-smi $(smi_mib "$B") MiB" || note "B does not run after the restore"
  res lr_restore_log "$(logcheck "$W/B.log" "$T_START")"; tail -1 "$W/res.jsonl"
fi
exit 0
