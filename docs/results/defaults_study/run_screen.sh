#!/bin/bash
# Stage 0 of the defaults study: seed-0 SST-2 screen of adapter.decomposition=lu,svd,qr, one job at a time.
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
. .venv/bin/activate
export PYTHONPATH=/tmp/defaults_snapshot/src HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
echo "start $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
python -m loldu_lightning -m experiment=minilm_gap experiment/studies/minilm_gap_arm=loldu_lr1e-3 \
  task=glue/sst2 seed=0 adapter.decomposition=lu,svd,qr logger=csv hydra/launcher=basic \
  hydra.sweep.dir=/tmp/defaults_study/sst2_seed0 'hydra.sweep.subdir=${hydra.job.num}_${adapter.decomposition}'
echo "end $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg) rc=$?"
