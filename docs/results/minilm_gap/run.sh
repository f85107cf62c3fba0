#!/bin/bash
# The minilm_gap study, run from a frozen snapshot of the source (/work/gap_snapshot) so that
# concurrent edits of the checkout cannot change runs mid-study.
cd /work/main
. .venv/bin/activate
export PYTHONPATH=/work/gap_snapshot/src HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
stage=$1; shift
exec nice -n 10 python -m loldu_lightning -m experiment=minilm_gap logger=csv \
  hydra.sweep.dir=/work/gap_study/runs "hydra.sweep.subdir=${stage}_\${hydra.job.num}" "$@"
