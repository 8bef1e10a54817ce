#!/usr/bin/env bash
# A throw-away Slurm cluster on this machine for the tests: Debian's munge and slurm-wlm
# (22.05) daemons with every file of theirs under one folder, and two nodes, `hostname -s`
# and localhost, each a slurmd of its own (slurmd -N) with all CPUs, so that jobs can span
# two nodes.
#   tests/slurm/cluster.sh install     apt-get install slurm-wlm munge (root, Debian registry)
#   tests/slurm/cluster.sh start DIR   writes DIR/slurm.conf, starts munged, slurmctld and
#                                      the two slurmd, waits until the nodes take jobs
#   tests/slurm/cluster.sh stop DIR    cancels the jobs left, stops the daemons by the PIDs
#                                      they wrote in DIR
# Clients reach the cluster with SLURM_CONF=DIR/slurm.conf. The system's munged, /etc/slurm
# and the default ports are left alone: munged listens on DIR/munge/munge.socket and the
# Slurm daemons on free ports, so several clusters can run on one machine.
set -euo pipefail

install_packages() {
  [ "$(id -u)" = 0 ] || { echo "installing Slurm needs root" >&2; return 1; }
  command -v apt-get >/dev/null || { echo "no apt-get on this machine" >&2; return 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
}

NODES=("$(hostname -s)" localhost)  # both names resolve to this machine (MASTER_ADDR)

write_config() {  # DIR
  local dir=$1 host cpus memory node nodes
  host=$(hostname -s)
  cpus=$(nproc)
  memory=$(awk '/^MemAvailable:/ {print int($2 / 1024 * 0.4)}' /proc/meminfo)
  nodes=$(IFS=,; echo "${NODES[*]}")
  # linuxproc and task/none: no cgroups needed (containers, gVisor); SlurmUser root: the
  # daemons and the jobs run as the one user that starts them. Jobs in partition urgent
  # pre-empt those in batch as a site would set it up: Slurm sends the job's --signal at once
  # (preempt_send_user_signal), then allows GraceTime seconds before it kills and requeues.
  # A random first job id: run.sub derives MASTER_PORT from the id, and clusters started side
  # by side on one machine would otherwise all count from 1.
  {
    cat <<EOF
ClusterName=bert-ci
FirstJobId=$(( (RANDOM << 15 | RANDOM) % 900000 + 100000 ))
SlurmctldHost=$host
SlurmUser=root
SlurmctldPort=$(free_port)
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
EOF
    for node in "${NODES[@]}"; do
      echo "NodeName=$node NodeHostname=$host Port=$(free_port) CPUs=$cpus RealMemory=$memory"
    done
    echo "PartitionName=batch Nodes=$nodes Default=YES State=UP PriorityTier=1 GraceTime=120"
    echo "PartitionName=urgent Nodes=$nodes State=UP PriorityTier=2 PreemptMode=OFF"
  } > "$dir/slurm.conf"
}

start_munge() {  # DIR
  local dir=$1 socket=$1/munge/munge.socket
  # munged runs as the munge user (the key in /etc/munge is its own) and wants its socket in
  # a folder that everyone may enter and only it may write.
  chmod 755 "$dir"
  install -d -o munge -g munge -m 755 "$dir/munge"
  runuser -u munge -- munged --socket="$socket" --pid-file="$dir/munge/munged.pid" \
    --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"
  munge --socket="$socket" -n | unmunge --socket="$socket" >/dev/null
}

wait_for_nodes() {  # DIR
  local dir=$1 states=""
  for _ in $(seq 60); do
    states=$(SLURM_CONF="$dir/slurm.conf" sinfo -h -N -o %T 2>/dev/null | sort -u | xargs)
    [ "$states" = idle ] && return 0
    sleep 0.5
  done
  echo "the nodes did not become idle in 30 s (states: '${states:-no answer}'); see" \
       "the logs in $dir" >&2
  return 1
}

start() {  # DIR
  local dir node
  dir=$(realpath "$1")
  [ "$(id -u)" = 0 ] || { echo "starting Slurm daemons needs root" >&2; return 1; }
  for program in munged slurmctld slurmd sbatch; do
    command -v "$program" >/dev/null ||
      { echo "$program not found: run '$0 install'" >&2; return 1; }
  done
  mkdir -p "$dir/state" "$dir/spool"
  write_config "$dir"
  # shellcheck disable=SC2064  # expanded now: a failed start leaves nothing running
  trap "stop '$dir'" EXIT
  start_munge "$dir"
  export SLURM_CONF=$dir/slurm.conf
  slurmctld -i  # -i: ignore state a previous cluster left in the folder
  for node in "${NODES[@]}"; do slurmd -N "$node"; done
  wait_for_nodes "$dir"
  trap - EXIT
  echo "SLURM_CONF=$SLURM_CONF"
}

stop() {  # DIR
  local dir=$1 pid_file pid
  # Jobs first: their slurmstepd processes would outlive slurmd.
  if [ -s "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
    export SLURM_CONF=$dir/slurm.conf
    squeue -h -o %A | xargs -r scancel
    for _ in $(seq 60); do [ -z "$(squeue -h -o %A)" ] && break; sleep 0.5; done
  fi
  for pid_file in "$dir"/slurmd-*.pid "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
    [ -s "$pid_file" ] || continue
    pid=$(cat "$pid_file")
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  done
}

case "${1:-}" in
  install) install_packages ;;
  start) start "${2:?usage: $0 start DIR}" ;;
  stop) stop "${2:?usage: $0 stop DIR}" ;;
  *) echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2 ;;
esac
