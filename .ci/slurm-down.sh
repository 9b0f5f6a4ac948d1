#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by .ci/slurm-up.sh (slurmd, slurmctld, munged).
# Safe to call when nothing runs; only stops the daemons that slurm-up started (by their pid files).
set -uo pipefail
STATE="${QSMFLOW_SLURM_DIR:-/var/tmp/qsmflow-slurm}"

command -v scancel >/dev/null && scancel --full --quiet -u root 2>/dev/null || true
stop_pidfile() {  # $1 = pid file
    local pid
    [ -s "$1" ] || return 0
    pid="$(cat "$1")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$1"
}
stop_pidfile "$STATE/slurmd.pid"
stop_pidfile "$STATE/slurmctld.pid"
for pf in /run/munge/munged.pid /var/run/munge/munged.pid; do stop_pidfile "$pf"; done
echo "slurm-down: stopped"
