#!/bin/bash
#PBS -N hpcpilot
#PBS -l nodes=4
#PBS -l walltime=5400
#PBS -o /lustre/atlas/harvester/ap/worker-4242/hpcpilot.out
#PBS -e /lustre/atlas/harvester/ap/worker-4242/hpcpilot.err

# hpcpilot batch script for site titan (PBS + aprun).
ACCESS_POINT='/lustre/atlas/harvester/ap/worker-4242'
NODES=4
CORES_PER_NODE=16
RANKS_PER_NODE=1
RANKS=$((NODES * RANKS_PER_NODE))
CORES_PER_RANK=$((CORES_PER_NODE / RANKS_PER_NODE))
if [ "$CORES_PER_RANK" -lt 1 ]; then CORES_PER_RANK=1; fi
export HPCPILOT_CORES_PER_RANK=$CORES_PER_RANK
# PBS gives no warning before the walltime limit: a timer below sends SIGUSR1
# to the launcher (aprun forwards it to the ranks) SIGNAL_MARGIN seconds early.
WALLTIME_SECONDS=5400
SIGNAL_MARGIN=300

cd "$ACCESS_POINT" || exit 64
source /etc/profile
module load python
if ! command -v hpcpilot >/dev/null; then echo "hpcpilot: command not found on PATH" >&2; exit 64; fi

aprun -n $RANKS -N $RANKS_PER_NODE -d $CORES_PER_RANK -cc depth hpcpilot run --access-point "$ACCESS_POINT" --site titan &
LAUNCHER_PID=$!
trap 'INTERRUPTED=1; kill -USR1 "$LAUNCHER_PID" 2>/dev/null' USR1
trap 'INTERRUPTED=1; kill -TERM "$LAUNCHER_PID" 2>/dev/null' TERM INT
WARN_AFTER=$((WALLTIME_SECONDS - SIGNAL_MARGIN))
if [ "$WARN_AFTER" -lt 1 ]; then WARN_AFTER=1; fi
(
    trap 'kill "$SLEEP_PID" 2>/dev/null; exit 0' TERM
    sleep "$WARN_AFTER" &
    SLEEP_PID=$!
    wait "$SLEEP_PID" && kill -USR1 "$LAUNCHER_PID" 2>/dev/null
) &
TIMER_PID=$!
# A trap interrupts "wait": wait again until the launcher has really ended.
STATUS=127
INTERRUPTED=1
while [ "$INTERRUPTED" = 1 ]; do
    INTERRUPTED=0
    wait "$LAUNCHER_PID"
    CODE=$?
    if [ "$CODE" -ne 127 ]; then STATUS=$CODE; fi
done
kill "$TIMER_PID" 2>/dev/null
exit "$STATUS"
