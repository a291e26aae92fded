#!/usr/bin/env bash
# The Slurm scale-out check: on this machine (Debian 12, as root; no systemd needed) bring up a
# one-node Slurm cluster, run experiments/slurm/sweep.sbatch as a 3-task job array into one
# store, and check that the store holds every point of the space exactly once, with the same
# numbers as a single-process `reparam sweep` of the same space; then resubmit the array and
# check that nothing runs twice. The daemons it started are stopped on exit.
#
#   REPARAM=target/release/reparam scripts/slurm-check.sh
#
# REPARAM: the binary (default: $CARGO_TARGET_DIR or target, release then debug).
# SLURM_CHECK_DIR: where the cluster's config, state, logs and stores go
# (default /tmp/reparam-slurm-check; emptied at the start, kept afterwards for inspection).
# SLURM_CHECK_TIMEOUT: seconds to wait for one job array (default 600).
set -euo pipefail
# A relative REPARAM is relative to where the script was called from.
if [[ -n ${REPARAM:-} && -x $REPARAM ]]; then
  REPARAM=$(cd "$(dirname "$REPARAM")" && pwd)/$(basename "$REPARAM")
fi
cd "$(dirname "$0")/.."
repo=$PWD
start=$SECONDS

die() { echo "slurm-check: FAILED: $*" >&2; exit 1; }
say() { echo "slurm-check: $*"; }

[[ $(id -u) == 0 ]] || die "run as root: it installs packages and starts munged/slurmd"

# --- The binary ------------------------------------------------------------------------------
if [[ -z ${REPARAM:-} ]]; then
  target=${CARGO_TARGET_DIR:-$repo/target}
  for p in "$target/release/reparam" "$target/debug/reparam"; do
    if [[ -x $p ]]; then REPARAM=$p; break; fi
  done
  [[ -n ${REPARAM:-} ]] || die "no reparam binary: build one (cargo build --release) or set REPARAM=/path/to/reparam"
fi
[[ -x $REPARAM && $REPARAM == /* ]] || die "REPARAM=$REPARAM is not an executable"

# --- 1. Packages -----------------------------------------------------------------------------
need=()
for c in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge python3:python3; do
  command -v "${c%%:*}" >/dev/null || need+=("${c#*:}")
done
if ((${#need[@]})); then
  say "installing ${need[*]}"
  # Keep the packages' postinst scripts from starting services: we start our own daemons.
  made_policy=
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  apt_log=$(mktemp)
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } \
    >"$apt_log" 2>&1 || { cat "$apt_log" >&2; die "apt-get could not install ${need[*]}"; }
  rm -f "$apt_log"
  [[ -z $made_policy ]] || rm -f /usr/sbin/policy-rc.d
fi

# --- The work dir, and daemons a killed earlier run may have left ------------------------------
work=${SLURM_CHECK_DIR:-/tmp/reparam-slurm-check}
# Stops the daemons in pidfiles $@ (name.pid, name being the daemon) if they are still those
# daemons (pids get reused): TERM to all, then up to 10 s for them to go, then KILL.
stop_pidfile() {
  local f pid pids=()
  for f; do
    pid=$(cat "$f" 2>/dev/null) || continue
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$(basename "$f" .pid)" ]] || continue
    kill "$pid" 2>/dev/null && pids+=("$pid")
  done
  for _ in $(seq 100); do
    local alive=
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [[ -n $alive ]] || return 0
    sleep 0.1
  done
  kill -9 "${pids[@]}" 2>/dev/null || true
}
# Jobs of an earlier run's cluster first: their slurmstepd would outlive slurmd.
if [[ -f $work/slurm.conf ]] && [[ $(cat "/proc/$(cat "$work/slurmctld.pid" 2>/dev/null)/comm" 2>/dev/null) == slurmctld ]]; then
  if SLURM_CONF=$work/slurm.conf scancel --user="$(id -un)" 2>/dev/null; then sleep 2; fi
fi
stop_pidfile "$work/slurmd.pid" "$work/slurmctld.pid" "$work/munged.pid"
rm -rf "$work"
mkdir -p "$work"/{state,spool,log,jobs}
export SLURM_CONF=$work/slurm.conf

jobs_submitted=()
munged_pid=
cleanup() {
  local rc=$?
  # Jobs still running (a failure or a timeout) would outlive slurmd in their slurmstepd.
  if ((${#jobs_submitted[@]})) && [[ -n $(squeue -h -j "$(IFS=,; echo "${jobs_submitted[*]}")" 2>/dev/null) ]]; then
    scancel "${jobs_submitted[@]}" 2>/dev/null || true
    sleep 2
  fi
  stop_pidfile "$work/slurmd.pid" "$work/slurmctld.pid"
  # munged last: the slurm daemons use it until they are gone. Only the one this run started.
  [[ -z $munged_pid ]] || stop_pidfile "$work/munged.pid"
  if ((rc != 0)); then
    echo "slurm-check: logs in $work/log and $work/jobs" >&2
  fi
}
trap cleanup EXIT
trap 'echo "slurm-check: interrupted" >&2; exit 130' INT TERM

# --- 2. munge --------------------------------------------------------------------------------
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
  # munged refuses a key or directories that others can read or write.
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  # /run/munge is a tmpfiles.d entry: without systemd nobody creates it.
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  chmod 755 /run/munge
  runuser -u munge -- munged
  # Its pid file is in /run/munge; a copy here lets a later run stop a munged this run leaked.
  munged_pid=$(</run/munge/munged.pid)
  echo "$munged_pid" >"$work/munged.pid"
  munge -n | unmunge >/dev/null || die "munged started but a credential does not verify"
  say "started munged (pid $munged_pid)"
fi

# --- 2. slurm.conf sized to this machine -------------------------------------------------------
node=$(hostname -s)
cpus=$(nproc)
# RealMemory above what slurmd measures drains the node: leave a margin (1 GiB or 10%).
mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
margin=$((mem_mb / 10 > 1024 ? mem_mb / 10 : 1024))
real_mb=$((mem_mb - margin))
((real_mb >= 1024)) || die "this machine has ${mem_mb} MB of memory; the check wants 2 GB"
cat >"$SLURM_CONF" <<EOF
# Written by scripts/slurm-check.sh: a one-node cluster on $node, no cgroups, no accounting.
ClusterName=reparamcheck
# 127.0.0.1: a container's hostname need not resolve. Ports off the default ones so that a
# real slurmd/slurmctld on this machine is left alone.
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=${SLURM_CHECK_CTLD_PORT:-16817}
SlurmdPort=${SLURM_CHECK_SLURMD_PORT:-16818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
# No cgroups in a container: track job processes by parent pid, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
# Cores and memory are consumable: array tasks share the node as --cpus-per-task/--mem allow.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A node that was down registers as idle again when its slurmd starts.
ReturnToService=2
# Keep finished jobs visible to scontrol long enough to read their exit codes.
MinJobAge=3600
# No mail is sent; an empty MailProg makes slurmctld log an error at start.
MailProg=/bin/true
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mb State=UNKNOWN
PartitionName=check Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF

slurmctld -f "$SLURM_CONF" || die "slurmctld did not start (see $work/log/slurmctld.log)"
slurmd -f "$SLURM_CONF" -N "$node" || die "slurmd did not start (see $work/log/slurmd.log)"
state=
for _ in $(seq 60); do
  state=$(sinfo -h -N -n "$node" -o %T 2>/dev/null || true)
  [[ $state == idle ]] && break
  sleep 1
done
[[ $state == idle ]] || die "node $node is '${state:-unknown}', not idle after 60 s: $(sinfo -h -R 2>&1)"
say "cluster up: node $node, $cpus CPUs, ${real_mb} MB (slurm $(sinfo -V | awk '{print $2}'))"

# --- The space, and the single-process reference ----------------------------------------------
space=$work/space.toml
cat >"$space" <<'EOF'
# 3 FFN widths x 2 attention widths = 6 points of about a second each on zoo:multi.
mode = "grid"
seed = 0

[eval]
ctx = 64
chunks = 2
task_prompts = 4
calib_samples = 2
calib_len = 64

[[rules]]
match = "blk.*.ffn_*"

[rules.rtn]
bits = [2, 3, 4]
group = 32

[[rules]]
match = "blk.*.attn_*"

[rules.rtn]
bits = [4, 8]
group = 32
EOF
model=zoo:multi
tasks=3
"$REPARAM" sweep "$model" --space "$space" --dry-run >"$work/points.txt" 2>"$work/log/dry-run.log" \
  || die "$REPARAM sweep --dry-run failed: $(tail -3 "$work/log/dry-run.log")"
points=$(wc -l <"$work/points.txt")
((points == 6)) || die "the space has $points points, expected 6"
# Lines are INDEX RECIPEHASH RECIPEJSON: the hashes are what the stores must hold.
awk '{print $2}' "$work/points.txt" | sort >"$work/recipes.txt"

say "reference: one process, $points points"
"$REPARAM" sweep "$model" --space "$space" --store "$work/ref" --jobs 1 >"$work/log/reference.log" 2>&1 \
  || die "the reference sweep failed: $(tail -3 "$work/log/reference.log")"

# --- 3. The job array ---------------------------------------------------------------------------
store=$work/store
# Submits the array as round $1 and waits for it; leaves its job id in $job.
run_array() {
  local round=$1 deadline=$((SECONDS + ${SLURM_CHECK_TIMEOUT:-600}))
  job=$(sbatch --parsable --array=0-$((tasks - 1)) --cpus-per-task=1 --mem=1G --time=00:20:00 \
    --chdir="$work" --output="$work/jobs/round$round-%a.log" \
    --export=ALL,REPARAM="$REPARAM" \
    "$repo/experiments/slurm/sweep.sbatch" "$model" "$space" "$store") \
    || die "sbatch refused the array"
  jobs_submitted+=("$job")
  while [[ -n $(squeue -h -j "$job" -o %i 2>/dev/null) ]]; do
    ((SECONDS < deadline)) || die "job $job still queued or running after ${SLURM_CHECK_TIMEOUT:-600} s"
    sleep 2
  done
  # Each task log must end its sweep cleanly (it says why when not).
  local t log
  for ((t = 0; t < tasks; t++)); do
    log=$work/jobs/round$round-$t.log
    grep -q '^sweep done: .* 0 failed, 0 cancelled' "$log" \
      || die "round $round task $t: no clean 'sweep done' line in $log: $(tail -3 "$log")"
  done
  # Every task must have completed with exit code 0 (accounting is off: ask slurmctld).
  local states
  states=$(scontrol -o show job "$job" | grep -o 'JobState=[A-Z_]* .*ExitCode=[0-9:]*' \
    | sed -E 's/JobState=([A-Z_]+) .*ExitCode=([0-9:]+)/\1 \2/' | sort | uniq -c | xargs)
  [[ $states == "$tasks COMPLETED 0:0" ]] || die "round $round: job $job tasks ended as: $states"
  say "round $round: job $job, $tasks tasks COMPLETED with exit 0:0"
  for ((t = 0; t < tasks; t++)); do
    echo "  task $t: $(grep '^sweep: ' "$work/jobs/round$round-$t.log")"
    echo "  task $t: $(grep '^sweep done: ' "$work/jobs/round$round-$t.log")"
  done
}

run_array 1
runs_files_1=$(find "$store" -maxdepth 1 -name 'run-*.parquet' | wc -l)

# --- 4. The store against the reference --------------------------------------------------------
"$REPARAM" history --store "$work/ref" --json >"$work/ref.json"
"$REPARAM" history --store "$store" --json >"$work/store1.json"
compare() {
  python3 - "$work/ref.json" "$1" "$work/recipes.txt" <<'EOF'
import json, sys

ref, got = (json.load(open(p)) for p in sys.argv[1:3])
recipes = sorted(open(sys.argv[3]).read().split())
# Timings differ from run to run; everything else is a deterministic function of the point.
def timing(name):
    return "tok_s" in name or "seconds" in name

def by_key(runs, where):
    keys = [r["run_key"] for r in runs]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        sys.exit(f"{where}: run keys stored more than once: {sorted(dup)}")
    bad = [(r["id"], r["status"], r["error"]) for r in runs if r["status"] != "ok"]
    if bad:
        sys.exit(f"{where}: runs not ok: {bad}")
    return {r["run_key"]: r for r in runs}

ref, got = by_key(ref, "reference"), by_key(got, "slurm store")
if sorted(r["recipe_hash"] for r in ref.values()) != recipes:
    sys.exit("reference: its recipes are not the space's points")
if set(ref) != set(got):
    sys.exit(f"run keys differ: only in reference {sorted(set(ref) - set(got))}, "
             f"only in the slurm store {sorted(set(got) - set(ref))}")
worst, compared, identical = 0.0, 0, True
for key, r in ref.items():
    m, n = r["metrics"], got[key]["metrics"]
    names = sorted(k for k in m if not timing(k))
    if sorted(k for k in n if not timing(k)) != names:
        sys.exit(f"{key}: metric names differ")
    for k in ("kld_mean", "ppl", "bytes", "top1_agree"):
        if m.get(k) is None:
            sys.exit(f"{key}: no {k}")
    for k in names:
        a, b = m[k], n[k]
        if a is None or b is None:
            if a is not b:
                sys.exit(f"{key} {k}: {a} vs {b}")
            continue
        compared += 1
        identical &= a == b
        rel = abs(a - b) / max(abs(a), abs(b), 1e-300)
        worst = max(worst, rel)
        if rel > 1e-9:
            sys.exit(f"{key} {k}: reference {a!r}, slurm {b!r} (relative {rel:.3g})")
print(f"{len(got)} run keys = the reference's, each once, all ok; {compared} metric values "
      f"compared, {'bit-identical' if identical else f'max relative difference {worst:.3g}'}")
EOF
}
result=$(compare "$work/store1.json" 2>&1) || die "store vs reference: $result"
say "store vs single-process reference: $result"

# --- 5. Resubmit: nothing may run twice --------------------------------------------------------
run_array 2
"$REPARAM" history --store "$store" --json >"$work/store2.json"
result2=$(compare "$work/store2.json" 2>&1) || die "after the resubmit: $result2"
ids() { python3 -c 'import json,sys; print(" ".join(sorted(r["id"] for r in json.load(open(sys.argv[1])))))' "$1"; }
[[ $(ids "$work/store1.json") == "$(ids "$work/store2.json")" ]] \
  || die "the resubmit changed the stored runs: $(ids "$work/store1.json") -> $(ids "$work/store2.json")"
runs_files_2=$(find "$store" -maxdepth 1 -name 'run-*.parquet' | wc -l)
((runs_files_1 == points && runs_files_2 == points)) \
  || die "run files: $runs_files_1 after round 1, $runs_files_2 after round 2, expected $points"
skipped=0
for ((t = 0; t < tasks; t++)); do
  log=$work/jobs/round2-$t.log
  line=$(grep '^sweep: ' "$log") || die "round 2 task $t: no 'sweep:' line in $log"
  if ! [[ $line =~ ,\ ([0-9]+)\ in\ this\ shard,\ ([0-9]+)\ already\ stored,\ 0\ to\ run$ ]] \
    || [[ ${BASH_REMATCH[1]} != "${BASH_REMATCH[2]}" ]]; then
    die "round 2 task $t ran something: $line"
  fi
  grep -q "^sweep done: 0 ok, 0 failed, 0 cancelled, ${BASH_REMATCH[2]} skipped$" "$log" \
    || die "round 2 task $t: $(grep '^sweep done' "$log")"
  skipped=$((skipped + BASH_REMATCH[2]))
done
((skipped == points)) || die "round 2 skipped $skipped points, expected $points"
say "resubmit: all $points points already stored, $runs_files_2 run files before and after"

say "OK: $points points over $tasks array tasks = single-process sweep; resubmit ran nothing; $((SECONDS - start)) s"
