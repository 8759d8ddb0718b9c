#!/usr/bin/env bash
# One long-lived driver that asks SLURM for GPU workers through dask-jobqueue (pip install 'rrsis[slurm]').
# Run it on a login node or as a small CPU job:  sbatch examples/slurm_dask.sh
# Each SLURM job (--slurm-gpus 4: #SBATCH --gres=gpu:4) starts one dask worker per GPU (worker k of a job on
# cuda:k); each worker loads the model once and takes one task at a time: a scene, or a window of tile rows of a
# scene of more than --split-tiles tiles (any worker; the last window's scene is then assembled by one task).
# OUT must be on a file system every node sees. A worker that dies (node failure, pre-emption) is replaced and
# its task rescheduled up to --retries times (a window resumes after its journaled bands); scenes that still
# fail are listed in OUT/manifest.json and the run exits 3.
# Queue, account and the rest can also come from ~/.config/dask/jobqueue.yaml.
#SBATCH --job-name=rrsis-driver
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --time=24:00:00
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

SCENES=${SCENES:-/data/scenes}
MODEL=${MODEL:-/models/lavt-rrsisd}
PROMPTS=${PROMPTS:-prompts.txt}
OUT=${OUT:-/scratch/$USER/rrsis-out}

rrsis --log-format json predict "$SCENES" --model "$MODEL" --prompts-file "$PROMPTS" --out "$OUT" \
  --cluster slurm --slurm-queue gpu --slurm-account "${ACCOUNT:-myproject}" --slurm-walltime 04:00:00 \
  --slurm-memory 64GB --slurm-gpus 4 --slurm-jobs 8 --retries 2 --split-tiles 512 --device auto --precision bf16 --batch-size 32
