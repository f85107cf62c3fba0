#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, in a folder of its own: munge, slurmctld and slurmd with
# this host as the only node and one partition (`debug`). For trying the SLURM launchers and the
# requeue path without a real cluster; the SLURM tests (tests/test_slurm_cluster.py) start it too.
#
#   scripts/slurm_local_cluster.sh start [DIR]   # DIR: a new folder under /tmp when left out
#   export SLURM_CONF=DIR/slurm.conf             # (or: . DIR/env.sh) then sbatch, srun, squeue, scontrol ...
#   scripts/slurm_local_cluster.sh stop DIR      # cancels the cluster's jobs, stops the daemons
#
# Needs root and Debian's packages: apt-get install slurm-wlm munge. No systemd and no cgroups
# (proctrack/linuxproc, task/none), so it runs in containers and CI machines too. Nothing outside
# DIR is written; the ports are free ones picked at start.
set -euo pipefail

usage() {
  echo "usage: $0 start [DIR] | stop DIR | status DIR" >&2
  exit 2
}

need() {
  command -v "$1" >/dev/null || {
    echo "error: $1 not found: install SLURM and munge (as root: apt-get install -y slurm-wlm munge)" >&2
    exit 1
  }
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Stop the process in pid file $1: TERM, then KILL after 10 s.
stop_pidfile() {
  local file=$1 pid
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

# The job step daemons of this cluster: slurmstepd keeps its sockets in this cluster's spool folder.
stepd_pids() {
  local dir=$1 pid
  for pid in $(pgrep -x slurmstepd || true); do
    if ls -l "/proc/$pid/fd" 2>/dev/null | grep -q -- "$dir/spool"; then echo "$pid"; fi
  done
}

cmd_stop() {
  local dir=$1
  if [ ! -f "$dir/slurm.conf" ] && [ ! -f "$dir/munge/munged.pid" ]; then
    echo "error: $dir holds no slurm.conf and no munged.pid: not a cluster folder of this script" >&2
    exit 1
  fi
  export SLURM_CONF=$dir/slurm.conf
  if [ -s "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
    # the jobs first, so that no job process outlives the cluster (slurmd does not kill them when it stops)
    scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 50); do
      [ -z "$(squeue -h -t running,completing 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
  local pid
  for pid in $(stepd_pids "$dir"); do
    pkill -KILL -P "$pid" 2>/dev/null || true  # the job's own processes, then their step daemon
    kill -KILL "$pid" 2>/dev/null || true
  done
  stop_pidfile "$dir/slurmd.pid"
  stop_pidfile "$dir/slurmctld.pid"
  stop_pidfile "$dir/munge/munged.pid"
  echo "stopped the cluster in $dir"
}

cmd_start() {
  local dir=${1:-}
  for tool in munged mungekey slurmctld slurmd sinfo python3; do need "$tool"; done
  [ "$(id -u)" = 0 ] || { echo "error: the local cluster runs its daemons as root: run this as root" >&2; exit 1; }
  if [ -z "$dir" ]; then dir=$(mktemp -d /tmp/loldu-slurm.XXXXXX); fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [ -s "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
    echo "error: a cluster already runs in $dir: stop it first ($0 stop $dir)" >&2
    exit 1
  fi
  # munged refuses a socket folder that others cannot read (700) or can write
  chmod 755 "$dir"
  mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/log"
  chmod 755 "$dir/munge"
  trap 'echo "error: the cluster did not start; logs in $dir/log" >&2; tail -n 20 "$dir"/log/*.log >&2 || true; cmd_stop "$dir" >/dev/null 2>&1 || true' ERR

  mungekey --create --force --keyfile="$dir/munge/munge.key"
  chmod 600 "$dir/munge/munge.key"
  local socket=$dir/munge/munge.socket
  munged --key-file="$dir/munge/munge.key" --socket="$socket" --pid-file="$dir/munge/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed"  # forks once its socket is up

  local host node ctld_port slurmd_port
  host=$(hostname -s)
  # this machine as `slurmd -C` sees it (CPUs, sockets, cores, threads, memory), reachable on loopback
  node=$(slurmd -C | head -n 1)
  ctld_port=$(free_port)
  slurmd_port=$(free_port)
  cat >"$dir/slurm.conf" <<EOF
# A one-node cluster written by scripts/slurm_local_cluster.sh
ClusterName=loldu-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# a requeued job runs again within seconds instead of minutes
SchedulerParameters=sched_interval=5,bf_interval=5
# finished jobs stay visible to scontrol show job (its Restarts count) for 10 minutes
MinJobAge=600
KillWait=5
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  printf 'export SLURM_CONF=%q\n' "$dir/slurm.conf" >"$dir/env.sh"
  export SLURM_CONF=$dir/slurm.conf
  slurmctld -i  # -i: ignore state left in the folder; daemonizes and writes its pid file
  slurmd
  local state=""
  for _ in $(seq 150); do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
    [ "$state" = idle ] && break
    sleep 0.2
  done
  if [ "$state" != idle ]; then
    echo "error: node $host is '${state:-unreachable}', not idle, after 30 s" >&2
    false
  fi
  trap - ERR
  echo "cluster up in $dir: node $host, partition debug (slurmctld port $ctld_port)"
  echo "export SLURM_CONF=$dir/slurm.conf"
}

cmd_status() {
  export SLURM_CONF=$1/slurm.conf
  sinfo
  squeue
}

case "${1:-}" in
  start) cmd_start "${2:-}" ;;
  stop) [ -n "${2:-}" ] || usage; cmd_stop "$2" ;;
  status) [ -n "${2:-}" ] || usage; cmd_status "$2" ;;
  *) usage ;;
esac
