#!/bin/bash
# Submit a pneumo run as a SLURM job array, one task per fold (slurm/folds.sbatch), and the job that
# builds its ensemble and report once every fold has ended well (slurm/ensemble.sbatch). Run it
# from the repository root: the jobs run in the directory they were submitted from.
#
#   slurm/submit_folds.sh [SBATCH OPTIONS FOR THE FOLD TASKS ...] -- TRAIN.PY ARGS
#   slurm/submit_folds.sh --time=02:00:00 -- --data-dir /data/chest_xray --output-dir runs/r18 --folds 5
#
# --output-dir is required; the array has a task per fold of --folds N (default 5), or per fold of
# --train-folds A B ... when given. Prints `folds ARRAY_ID` and `ensemble JOB_ID`, one line each.
# Environment: PNEUMO_ARRAY_MAX=M runs at most M fold tasks at once (--array=0-4%M);
# PNEUMO_ENSEMBLE_SBATCH="OPTIONS" adds sbatch options to the ensemble job only. Options for both
# jobs (account, partition) go in sbatch's own SBATCH_ACCOUNT, SBATCH_PARTITION, ... variables.
set -euo pipefail

die() {
  echo "submit_folds.sh: $*" >&2
  exit 2
}

# Arrays that may be empty are expanded as ${a[@]+"${a[@]}"}: under set -u, bash before 4.4
# (RHEL 7 login nodes) stops at "${a[@]}" of an empty array as an unbound variable.
sbatch_opts=()
while (($#)) && [[ $1 != -- ]]; do
  sbatch_opts+=("$1")
  shift
done
(($#)) || die "usage: slurm/submit_folds.sh [SBATCH OPTIONS ...] -- TRAIN.PY ARGS (the -- is required)"
shift
train_args=("$@")

root=$(cd "$(dirname "$0")/.." && pwd -P)
[[ $(pwd -P) == "$root" ]] || die "run me from the repository root ($root): the jobs start in the submit directory"

# The train.py flags that shape the array, in both spellings argparse accepts (--flag V, --flag=V).
output_dir='' folds=5 folds_given=0 train_folds=() config=0
for ((i = 0; i < ${#train_args[@]}; i++)); do
  arg=${train_args[i]}
  case $arg in
    --output-dir) output_dir=${train_args[i + 1]:-} ;;
    --output-dir=*) output_dir=${arg#*=} ;;
    --folds) folds=${train_args[i + 1]:-} folds_given=1 ;;
    --folds=*) folds=${arg#*=} folds_given=1 ;;
    --train-folds=*) train_folds=("${arg#*=}") ;;
    --train-folds)
      train_folds=()
      while ((i + 1 < ${#train_args[@]})) && [[ ${train_args[i + 1]} != -* ]]; do
        train_folds+=("${train_args[i + 1]}")
        i=$((i + 1))
      done
      ;;
    --config | --config=*) config=1 ;;
    # Every task (and every requeue of one) would delete the others' folds.
    --overwrite) die "--overwrite is refused for a fold array: delete the old --output-dir first" ;;
  esac
done
[[ -n $output_dir ]] || die "--output-dir is required: the fold tasks and the ensemble job share that run directory"
if [[ ! $folds =~ ^[0-9]+$ ]] || ((10#$folds < 2)); then die "--folds must be an integer >= 2, got '$folds'"; fi
if ((config && !folds_given)); then
  echo "submit_folds.sh: note: the array is built for --folds $folds; a --config that sets folds is not read here" >&2
fi

if ((${#train_folds[@]})); then
  for fold in "${train_folds[@]}"; do
    if [[ ! $fold =~ ^[0-9]+$ ]] || ((10#$fold >= 10#$folds)); then
      die "--train-folds: '$fold' is not a fold of --folds $folds"
    fi
  done
  array=$(IFS=,; echo "${train_folds[*]}")
else
  array="0-$((10#$folds - 1))"
fi
if [[ -n ${PNEUMO_ARRAY_MAX:-} ]]; then
  [[ $PNEUMO_ARRAY_MAX =~ ^[1-9][0-9]*$ ]] || die "PNEUMO_ARRAY_MAX must be a positive integer, got '$PNEUMO_ARRAY_MAX'"
  array+="%$PNEUMO_ARRAY_MAX"
fi

# `sbatch --parsable` prints ID or ID;CLUSTER. The user's options come after --array, so theirs win.
job_id() {
  local id=${1%%;*}
  [[ $id =~ ^[0-9]+$ ]] || die "unexpected sbatch output '$1'"
  echo "$id"
}
out=$(sbatch --parsable --array="$array" ${sbatch_opts[@]+"${sbatch_opts[@]}"} slurm/folds.sbatch "${train_args[@]}")
folds_id=$(job_id "$out")
echo "folds $folds_id"
read -ra ensemble_opts <<<"${PNEUMO_ENSEMBLE_SBATCH:-}"
# afterok on an array waits for every task to end with status 0; a requeued task is pending again, not failed.
out=$(sbatch --parsable --dependency="afterok:$folds_id" ${ensemble_opts[@]+"${ensemble_opts[@]}"} \
  slurm/ensemble.sbatch "$output_dir")
ensemble_id=$(job_id "$out")
echo "ensemble $ensemble_id"
