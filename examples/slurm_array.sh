#!/usr/bin/env bash
# One SLURM job-array task per shard of the scenes; no dask needed. Submit with:
#   sbatch --array=0-15 examples/slurm_array.sh
# then, when all tasks finished (or from a dependent job: sbatch --dependency=afterany:<jobid> ...):
#   rrsis manifest merge "$OUT"
# Each task reads SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT and keeps its deterministic share of the scenes
# (a hash of each path: disjoint, complete, independent of the listing order). Shards lock separately, so
# they write into one OUT side by side, each with its own manifest-shard-I-of-N.json. Rerunning a task skips
# its finished scenes and resumes an interrupted one from the tile journal.
#SBATCH --job-name=rrsis-predict
#SBATCH --gpus=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=04:00:00
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail

SCENES=${SCENES:-/data/scenes}
MODEL=${MODEL:-/models/lavt-rrsisd}
PROMPTS=${PROMPTS:-prompts.txt}
OUT=${OUT:-/scratch/$USER/rrsis-out}

rrsis --log-format json predict "$SCENES" --model "$MODEL" --prompts-file "$PROMPTS" --out "$OUT" \
  --device cuda --precision bf16 --batch-size 32
