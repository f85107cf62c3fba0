#!/bin/bash
# Stage 0 diagnostic: svd with z and sigma at 3e-2 (head 1e-3), the rate that gives an SVD component the step an LU one gets at 1e-3.
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
. .venv/bin/activate
export PYTHONPATH=/tmp/defaults_snapshot/src HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
echo "start $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
python -m loldu_lightning -m experiment=minilm_gap experiment/studies/minilm_gap_arm=loldu_lr3e-2_h1e-3 \
  task=glue/sst2 seed=0 adapter.decomposition=svd logger=csv hydra/launcher=basic \
  hydra.sweep.dir=/tmp/defaults_study/sst2_seed0_rate 'hydra.sweep.subdir=${hydra.job.num}_${adapter.decomposition}'
echo "end $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg) rc=$?"
