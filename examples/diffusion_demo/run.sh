#!/usr/bin/env bash
# CPU demo of the diffusion task family: tiny-sd (a random Stable Diffusion built in code) learns one real
# DreamBooth subject with LoLDU, through the normal CLI, then the results are summarised (loss curve,
# sample progression, table). Run from the repository root:
#   bash examples/diffusion_demo/run.sh
# Knobs (environment): OUT, DATA, SUBJECT, STEPS, PYTHON, RESULTS (where the small summary files go).
set -euo pipefail

OUT=${OUT:-outputs/diffusion_demo}
DATA=${DATA:-../shared/data/dreambooth}
SUBJECT=${SUBJECT:-dog}
STEPS=${STEPS:-200}
PYTHON=${PYTHON:-python}
RESULTS=${RESULTS:-$OUT/summary}

# LoLDU at full rank on tiny-sd's 32 attention projections (1,248 trainable numbers), lr 5e-3 (the paper's
# 5e-4 is for rank 32 on SD v1.5), 32 px, validation every 25 steps, sample grids every 50 steps with
# 10 DPM-Solver steps.
"$PYTHON" -m loldu_lightning task=diffusion/subject model=tiny-sd "data.root=$DATA" "data.subject=$SUBJECT" \
  "trainer.max_steps=$STEPS" trainer.val_check_interval=25 sampling.every_n_steps=50 \
  sampling.num_inference_steps=10 optimizer.lr=5e-3 "hydra.run.dir=$OUT/loldu"

"$PYTHON" examples/diffusion_demo/summarize.py "$OUT/loldu" --out "$RESULTS" --scale 2
