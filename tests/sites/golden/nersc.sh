#!/bin/bash
#SBATCH --job-name=hpcpilot
#SBATCH --nodes=4
#SBATCH --time=90
#SBATCH --signal=SIGUSR1@300
#SBATCH --output=/lustre/atlas/harvester/ap/worker-4242/hpcpilot-%j.out
#SBATCH --error=/lustre/atlas/harvester/ap/worker-4242/hpcpilot-%j.err
#SBATCH --constraint=cpu
#SBATCH --qos=regular

# hpcpilot batch script for site nersc (Slurm + srun).
# --signal has no "B:" on purpose: Slurm then signals the srun job step,
# i.e. the pilot ranks, which wrap up before the walltime limit.
ACCESS_POINT='/lustre/atlas/harvester/ap/worker-4242'
NODES=4
CORES_PER_NODE=128
RANKS_PER_NODE=1
RANKS=$((NODES * RANKS_PER_NODE))
CORES_PER_RANK=$((CORES_PER_NODE / RANKS_PER_NODE))
if [ "$CORES_PER_RANK" -lt 1 ]; then CORES_PER_RANK=1; fi
export HPCPILOT_CORES_PER_RANK=$CORES_PER_RANK

cd "$ACCESS_POINT" || exit 64
module load python
if ! command -v hpcpilot >/dev/null; then echo "hpcpilot: command not found on PATH" >&2; exit 64; fi

exec srun --kill-on-bad-exit=1 --nodes=$NODES --ntasks-per-node=$RANKS_PER_NODE --cpus-per-task=$((2 * CORES_PER_RANK)) --cpu-bind=cores hpcpilot run --access-point "$ACCESS_POINT" --site nersc
