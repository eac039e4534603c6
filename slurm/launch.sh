#!/bin/bash
# The launch that slurm/train.sbatch and slurm/folds.sbatch share: `bash slurm/launch.sh TRAIN.PY ARGS`
# from inside a SLURM batch script, in the repository root (the sbatch scripts cd there: sbatch runs a
# spool copy of them, so this file is found only relative to $SLURM_SUBMIT_DIR, the repository root).
#
# One srun task per node starts `accelerate launch` with one process per GPU of that node; the first
# node of the allocation is the main one. Environment: PNEUMO_VENV (default .venv), PNEUMO_NPROC
# (processes per node, default: the node's GPUs, else 1), PNEUMO_PORT (rendezvous port, default from
# the job id), PNEUMO_MIXED_PRECISION (no, fp16 or bf16; default: what this node's GPU does well).
set -euo pipefail

# shellcheck source=/dev/null  # the user's virtual environment, not part of this repository
source "${PNEUMO_VENV:-.venv}/bin/activate"

nodes=${SLURM_NNODES:-1}
per_node=${PNEUMO_NPROC:-${SLURM_GPUS_ON_NODE:-1}}
main_host=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | awk 'NR == 1')  # reads all: head would SIGPIPE scontrol under pipefail
# SLURM_JOB_ID is unique per job and per array task, so array tasks sharing a node get different
# ports (and a requeued task keeps its own). 20000-29999 lies below Linux's ephemeral range
# (32768+): no outgoing connection on the node can be holding it.
port=${PNEUMO_PORT:-$((20000 + SLURM_JOB_ID % 10000))}

# Mixed precision follows the hardware: bf16 where the GPU runs it natively (Ampere and later; the
# emulated bf16 of older GPUs is slow, so they get fp16), no without a GPU. Probed here, on the
# allocation's first node, with the venv's torch: the nodes of one job are assumed alike. It is only
# the launcher's default: train.py's own --mixed-precision, when given, wins.
if [[ -n ${PNEUMO_MIXED_PRECISION:-} ]]; then
  precision=$PNEUMO_MIXED_PRECISION
  if [[ ! $precision =~ ^(no|fp16|bf16)$ ]]; then
    echo "pneumo: PNEUMO_MIXED_PRECISION must be no, fp16 or bf16, not '$precision'" >&2
    exit 2
  fi
else
  precision=$(python -c '
import torch
cuda = torch.cuda
print("no" if not cuda.is_available() else "bf16" if cuda.is_bf16_supported(including_emulation=False) else "fp16")
' 2>/dev/null) || precision=
  if [[ ! $precision =~ ^(no|fp16|bf16)$ ]]; then
    echo "pneumo: could not probe the GPU with the venv's python; mixed precision no" >&2
    precision=no
  fi
fi

# torchrun must pass SIGUSR1 on to the training processes (by default it dies of it) and give
# them time to write their state before it kills them.
# (torchrun's --signals-to-handle and --shutdown-timeout, read from PET_* by the launcher).
export PET_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1
export PET_SHUTDOWN_TIMEOUT=110

job=$SLURM_JOB_ID
if [[ -n ${SLURM_ARRAY_TASK_ID:-} ]]; then
  job="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} (job id $SLURM_JOB_ID)"
fi
echo "pneumo: job $job (restart ${SLURM_RESTART_COUNT:-0}), $nodes node(s) x $per_node process(es)," \
  "main $main_host:$port, mixed precision $precision"
# --wait=0: a node whose folds are done ends its task early; srun must not then kill the nodes
# still training (it does after the cluster's WaitTime unless told to wait for ever). A task that
# fails still stops the others (--kill-on-bad-exit=1: SIGTERM, so they save their state).
# Single quotes on purpose: $SLURM_NODEID is expanded by each node's own task.
# shellcheck disable=SC2016
srun --wait=0 --kill-on-bad-exit=1 bash -c '
  exec python -m accelerate.commands.launch --multi_gpu --num_machines "$0" --num_processes "$1" \
    --machine_rank "$SLURM_NODEID" --main_process_ip "$2" --main_process_port "$3" \
    --mixed_precision "$4" --dynamo_backend no train.py "${@:5}"
' "$nodes" $((nodes * per_node)) "$main_host" "$port" "$precision" "$@"
