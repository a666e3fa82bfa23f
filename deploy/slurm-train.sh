#!/bin/bash
# Multi-node BRIDLE training on SLURM: one torchrun agent per node, joined by c10d rendezvous on the first
# node; torchrun starts one training process per GPU (NCCL) or, on CPU-only nodes, one per --cpus (gloo).
#
#   sbatch deploy/slurm-train.sh bridle/training/recipes/audio-digits.yaml [key=value ...]
#   sbatch --nodes 4 --gpus-per-node 8 deploy/slurm-train.sh my-recipe.yaml train.precision=bf16
#
# Needs: the project installed in a venv on a filesystem every node mounts (BRIDLE_VENV, default .venv),
# and the recipe's data and out_dir on that shared filesystem too: rank 0 alone writes checkpoints, every
# rank reads them (the next stage, --resume). Large data sets: write WebDataset shards once with
# `bridle-train shards SOURCE OUT --modality ...` and point data.train at OUT; each rank and worker then
# reads its own shards. The run resumes from its last checkpoint, so a requeued or re-submitted job
# continues where it stopped (mid-epoch included). Untested on a real cluster here: it was checked with two
# torchrun agents on one machine (README, "Training at scale").
#SBATCH --job-name=bridle-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --output=runs/slurm-%j.out
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: sbatch deploy/slurm-train.sh RECIPE.yaml [key=value ...]" >&2
    exit 2
fi
cd "${SLURM_SUBMIT_DIR:-.}"
VENV=${BRIDLE_VENV:-.venv}
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
PORT=${BRIDLE_RDZV_PORT:-29500}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    PER_NODE=$(nvidia-smi -L | wc -l)  # one process per GPU, NCCL
else
    PER_NODE=${BRIDLE_PROCS_PER_NODE:-1}  # CPU nodes: gloo; each process uses OMP_NUM_THREADS cores
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( ${SLURM_CPUS_PER_TASK:-1} / PER_NODE > 0 ? ${SLURM_CPUS_PER_TASK:-1} / PER_NODE : 1 ))}
# NCCL: set NCCL_SOCKET_IFNAME (e.g. ib0) when the nodes have several networks; NCCL_DEBUG=INFO to debug.

srun --ntasks-per-node=1 "$VENV/bin/torchrun" \
    --nnodes="$SLURM_NNODES" \
    --nproc_per_node="$PER_NODE" \
    --rdzv_backend=c10d \
    --rdzv_endpoint="$HEAD_NODE:$PORT" \
    --rdzv_id="$SLURM_JOB_ID" \
    -m bridle.training.cli run "$@" --resume
