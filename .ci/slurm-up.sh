#!/usr/bin/env bash
# Start a single-node SLURM cluster on localhost (munged + slurmctld + slurmd), as root, no systemd.
#
#   bash .ci/slurm-up.sh          # install (apt), configure, start, wait until the node is idle
#   bash .ci/slurm-down.sh        # stop everything again
#
# Used by .ci/run so that tests/test_slurm.py runs the BIDS App through a real scheduler. Every
# completed job is appended to $QSMFLOW_SLURM_DIR/jobcomp.log (jobcomp/filetxt); sacct is not
# available because no slurmdbd runs. Fails loudly (non-zero exit, last log lines) when anything
# cannot start: CI must not skip the SLURM test silently.
set -euo pipefail

STATE="${QSMFLOW_SLURM_DIR:-/var/tmp/qsmflow-slurm}"
CONF=/etc/slurm/slurm.conf
export DEBIAN_FRONTEND=noninteractive

die() {
    echo "slurm-up: ERROR: $*" >&2
    for f in "$STATE"/slurmctld.log "$STATE"/slurmd.log /var/log/munge/munged.log; do
        [ -f "$f" ] && { echo "--- $f (last lines)" >&2; tail -n 20 "$f" >&2; }
    done
    exit 1
}

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    echo "slurm-up: installing slurm-wlm and munge (apt-get)"
    for try in 1 2 3; do  # a registry hiccup should not fail CI; a real "no" still does
        apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge \
            >/dev/null && break
        [ "$try" = 3 ] && die "apt-get install slurm-wlm munge failed 3 times"
        echo "slurm-up: apt-get failed (try $try), retrying in 10 s" >&2; sleep 10
    done
fi

mkdir -p "$STATE"/{ctld,d,spool} /etc/slurm /run/munge /var/log/munge /var/lib/munge
chmod 755 "$STATE"
# a fresh completion log per cluster start (the previous one is kept as .old)
if ! pgrep -x slurmctld >/dev/null && [ -f "$STATE/jobcomp.log" ]; then
    mv -f "$STATE/jobcomp.log" "$STATE/jobcomp.log.old"
fi

# --- munge: a key (created if the package did not), daemon as the munge user ---------------
if ! pgrep -x munged >/dev/null; then
    if [ ! -s /etc/munge/munge.key ]; then
        if command -v mungekey >/dev/null; then mungekey --create --force
        else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
    fi
    chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
    chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key; chmod 755 /run/munge
    runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
fi
for _ in $(seq 1 20); do munge -n >/dev/null 2>&1 && break; sleep 0.5; done
munge -n | unmunge >/dev/null || die "munge round trip failed"

# --- slurm.conf for this one node ------------------------------------------------------------
NODE="$(hostname -s)"
CPUS="$(nproc --all)"
MEM_MB="$(awk '/MemTotal/ {printf "%d", $2/1024*0.9}' /proc/meminfo)"   # leave 10 % to the OS
cat >"$CONF" <<CONFEOF
# written by qsmflow .ci/slurm-up.sh: a single-node cluster on localhost for tests
ClusterName=qsmflow-ci
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=${STATE}/ctld
SlurmdSpoolDir=${STATE}/d
SlurmctldPidFile=${STATE}/slurmctld.pid
SlurmdPidFile=${STATE}/slurmd.pid
SlurmctldLogFile=${STATE}/slurmctld.log
SlurmdLogFile=${STATE}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
DefMemPerCPU=512
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=${STATE}/jobcomp.log
ReturnToService=2
MinJobAge=30
MpiDefault=none
SwitchType=switch/none
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=debug Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONFEOF
chmod 644 "$CONF"

# --- daemons ---------------------------------------------------------------------------------
if ! pgrep -x slurmctld >/dev/null; then
    /usr/sbin/slurmctld -c -f "$CONF" || die "slurmctld did not start"
else
    scontrol reconfigure || die "slurmctld runs but does not take the new slurm.conf"
fi
if ! pgrep -x slurmd >/dev/null; then
    /usr/sbin/slurmd -f "$CONF" || die "slurmd did not start"
fi

for _ in $(seq 1 60); do
    state="$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null || true)"
    case "$state" in idle*) break ;; esac
    case "$state" in down*|drain*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;; esac
    sleep 1
done
case "${state:-}" in idle*) ;; *) die "node $NODE is not idle after 60 s (state: '${state:-none}')" ;; esac
echo "slurm-up: node ${NODE} idle (${CPUS} CPUs, ${MEM_MB} MB); completed jobs -> ${STATE}/jobcomp.log"
