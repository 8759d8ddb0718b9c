#!/usr/bin/env bash
# Nightly predict from cron. Example crontab line (02:15 every night):
#   15 2 * * * /opt/rrsis/examples/cron_predict.sh >> /var/log/rrsis/cron.log 2>&1
#
# - flock: an overlapping run (last night's still going) exits at once instead of colliding; rrsis also holds
#   its own lock on the output directory, so a manual run into the same OUT fails clearly instead of corrupting it.
# - finished (scene, prompt) pairs are skipped by their configuration hash; a run killed mid-scene resumes from
#   its tile journal, so rerunning is always safe.
# - exit codes: 0 all done, 3 some scenes failed (listed in OUT/manifest.json), 1 nothing done, 2 usage error,
#   130 interrupted. Only 0 is silent; anything else is reported (mail from cron, or your monitoring).
set -uo pipefail

SCENES=${SCENES:-/data/incoming}                 # folder of GeoTIFFs (searched recursively)
MODEL=${MODEL:-/models/lavt-rrsisd}              # model directory or zoo card
PROMPTS=${PROMPTS:-/etc/rrsis/prompts.txt}       # one referring expression per line
OUT=${OUT:-/data/rrsis-out}
LOCK=${LOCK:-/tmp/rrsis-nightly.lock}
LOGDIR=${LOGDIR:-/var/log/rrsis}
RRSIS=${RRSIS:-rrsis}

mkdir -p "$LOGDIR" "$OUT"
log="$LOGDIR/predict-$(date +%Y%m%d-%H%M%S).jsonl"

exec 9>"$LOCK"
if ! flock -n 9; then
  echo "$(date -Is) previous nightly run still active; skipping" >&2
  exit 0
fi

"$RRSIS" --log-format json predict "$SCENES" --model "$MODEL" --prompts-file "$PROMPTS" --out "$OUT" \
  --device auto --precision bf16 2>>"$log"
code=$?

case $code in
  0)   echo "$(date -Is) rrsis nightly: all scenes done (log $log)" ;;
  3)   echo "$(date -Is) rrsis nightly: some scenes failed, see $OUT/manifest.json and $log" >&2 ;;
  130) echo "$(date -Is) rrsis nightly: interrupted; the next run resumes" >&2 ;;
  *)   echo "$(date -Is) rrsis nightly: failed with exit code $code, see $log" >&2 ;;
esac
exit $code
