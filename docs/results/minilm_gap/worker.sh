#!/bin/bash
# One worker of the study: waits until the named chain ends, then runs its stages in order.
wait_for=$1; shift
while pgrep -f "subdir=${wait_for}_" > /dev/null; do sleep 20; done
cd /work/main
. .venv/bin/activate
export PYTHONPATH=/work/gap_snapshot/src HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
for stage in "$@"; do
  # stage = "<sweep dir>|<tag>|<overrides...>"
  IFS='|' read -r dir tag overrides <<< "$stage"
  python -m loldu_lightning -m experiment=minilm_gap logger=csv hydra.sweep.dir=/work/gap_study/$dir \
    "hydra.sweep.subdir=${tag}_\${hydra.job.num}" $overrides
done
