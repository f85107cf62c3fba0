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
# one thread per process: on a small shared CPU, more threads on a tiny model only spin (measured: ~10x slower)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

COMMON=(task=diffusion/subject model=tiny-sd "data.root=$DATA" "data.subject=$SUBJECT" "trainer.max_steps=$STEPS"
        trainer.val_check_interval=25 sampling.num_inference_steps=10)

# LoLDU at full rank on tiny-sd's 32 attention projections (1,248 trainable numbers), lr 5e-3 (the paper's
# 5e-4 is for rank 32 on SD v1.5), 32 px, validation every 25 steps, sample grids every 50 steps with
# 10 DPM-Solver steps.
"$PYTHON" -m loldu_lightning "${COMMON[@]}" adapter=loldu optimizer.lr=5e-3 sampling.every_n_steps=50 \
  "hydra.run.dir=$OUT/loldu"

# the same budget for two baselines of the adapter registry (grids only at the start and the end):
# LoRA (rank 8, PEFT) and full fine-tuning of the UNet
"$PYTHON" -m loldu_lightning "${COMMON[@]}" adapter=lora adapter.rank=8 adapter.alpha=8 optimizer.lr=1e-3 \
  sampling.every_n_steps=0 "hydra.run.dir=$OUT/lora_r8"
"$PYTHON" -m loldu_lightning "${COMMON[@]}" adapter=full optimizer.lr=1e-4 sampling.every_n_steps=0 \
  "hydra.run.dir=$OUT/full"

"$PYTHON" examples/diffusion_demo/summarize.py "$OUT/loldu" "$OUT/lora_r8" "$OUT/full" --out "$RESULTS" --scale 2
