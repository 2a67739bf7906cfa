#!/usr/bin/env bash
# Stops what start_cluster.sh started (by the PIDs it recorded): `tests/slurm/stop_cluster.sh [STATE_DIR]`.
set -u
state="${1:-${ENDOFM_SLURM_STATE:-/tmp/endofm-slurm}}"
pids=/run/endofm-slurm   # fixed, whatever STATE_DIR: a later start stops an earlier cluster
scancel --user="$(id -un)" >/dev/null 2>&1 || true
for name in slurmd slurmctld munged; do
  pidfile="$pids/$name.pid"
  [ -f "$pidfile" ] || continue
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$pidfile"
done
# munged runs below runuser: its own pid file
if [ -f /run/endofm-slurm/munged.started ] && [ -f /run/munge/munged.pid ]; then
  kill -TERM "$(cat /run/munge/munged.pid)" 2>/dev/null || true
  rm -f /run/endofm-slurm/munged.started
fi
exit 0
