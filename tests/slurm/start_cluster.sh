#!/usr/bin/env bash
# A real one-node SLURM on this machine (Debian 12, root): `tests/slurm/start_cluster.sh [STATE_DIR]`.
# Installs slurmctld, slurmd, slurm-client and munge when absent (dpkg starts no daemons), writes
# slurm.conf/gres.conf/cgroup.conf for this host (proctrack/cgroup, no accounting, partitions cpu
# (default) and gpu, two placeholder GPUs), starts munged, slurmctld and slurmd in the background and
# waits until `sinfo` shows the node idle. Their PIDs go to /run/endofm-slurm/*.pid; stop_cluster.sh
# stops them. Exit status 0: the cluster is up; anything else: it is not (the reason is on stderr).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
state="${1:-${ENDOFM_SLURM_STATE:-/tmp/endofm-slurm}}"
pids=/run/endofm-slurm   # fixed, whatever STATE_DIR: a later start stops an earlier cluster
host="$(hostname -s)"
cpus="$(nproc)"
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))   # all but 1 GiB
log() { echo "start_cluster: $*" >&2; }

if [ "$(id -u)" != 0 ]; then log "must run as root (slurmd and munged need it)"; exit 2; fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v sbatch >/dev/null; then
  log "installing slurmctld slurmd slurm-client munge"
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d   # dpkg must not start the daemons
  chmod +x /usr/sbin/policy-rc.d
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >"$state.apt.log" 2>&1 \
    || { apt-get update >>"$state.apt.log" 2>&1 \
         && apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >>"$state.apt.log" 2>&1; } \
    || { log "apt-get install failed (see $state.apt.log)"; rm -f /usr/sbin/policy-rc.d; exit 3; }
  rm -f /usr/sbin/policy-rc.d
fi

"$here/stop_cluster.sh" "$state" >/dev/null 2>&1 || true   # a cluster left by an earlier run
if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
  log "a slurmctld/slurmd not started by this script is running; stop it first"; exit 6
fi
mkdir -p "$pids" "$state"/{spool/ctld,spool/d,log,gpu} /etc/slurm /run/munge /var/log/munge /var/lib/munge /etc/munge
chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge 2>/dev/null || true
chmod 0755 /run/munge

# Placeholder GPU devices: Slurm 22.05 drops GPUs without File= (they are /dev/null's major/minor).
for i in 0 1; do [ -c "$state/gpu/gpu$i" ] || mknod "$state/gpu/gpu$i" c 1 3; done

sed -e "s|@HOST@|$host|g" -e "s|@CPUS@|$cpus|g" -e "s|@MEM@|$mem_mb|g" -e "s|@STATE@|$state|g" \
  "$here/slurm.conf.in" > /etc/slurm/slurm.conf
sed -e "s|@HOST@|$host|g" -e "s|@STATE@|$state|g" "$here/gres.conf.in" > /etc/slurm/gres.conf
cp "$here/cgroup.conf" /etc/slurm/cgroup.conf

if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
fi

start() {  # name, command...: in the background, its PID in $state/<name>.pid
  local name=$1; shift
  setsid "$@" >"$state/log/$name.out" 2>&1 < /dev/null &
  echo $! > "$pids/$name.pid"
}
start munged runuser -u munge -- /usr/sbin/munged --foreground --force
touch "$pids/munged.started"
for _ in $(seq 50); do [ -S /run/munge/munge.socket.2 ] && break; sleep 0.2; done
[ -S /run/munge/munge.socket.2 ] || { log "munged did not start: $(tail -3 "$state/log/munged.out")"; exit 4; }
start slurmctld /usr/sbin/slurmctld -D -i -f /etc/slurm/slurm.conf
sleep 1
start slurmd /usr/sbin/slurmd -D -f /etc/slurm/slurm.conf

for _ in $(seq 60); do
  st="$(sinfo -h -n "$host" -o %T 2>/dev/null | head -1 || true)"
  case "$st" in
    idle*) log "node $host is idle (state in $state)"; exit 0 ;;
    down*|drain*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
log "node $host did not become idle (state '${st:-none}'); last log lines:"
tail -5 "$state/log/slurmctld.out" "$state/log/slurmd.out" "$state/log/slurmctld.log" "$state/log/slurmd.log" >&2 2>/dev/null || true
exit 5
