#!/usr/bin/env bash
# Pretrain a small ViT on five CIFAR-10 classes, then adapt it to the other five with LoLDU, LoRA
# (r=16) and a linear probe through the normal CLI. Run from the repository root:
#   bash examples/vit_transfer/run.sh
# Knobs (environment): OUT, DATA, PRETRAIN_EPOCHS, EPOCHS, PYTHON.
set -euo pipefail

OUT=${OUT:-outputs/vit_transfer}
DATA=${DATA:-../shared/data/cifar10_subset}
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-10}
EPOCHS=${EPOCHS:-5}
PYTHON=${PYTHON:-python}

if [ ! -f "$OUT/vit-small-cifar5/model.safetensors" ]; then
  "$PYTHON" examples/vit_transfer/pretrain.py --data "$DATA" --out "$OUT" --epochs "$PRETRAIN_EPOCHS"
fi

# model=vit-base-in21k supplies the ViT target modules (query,value) and head (classifier); the
# folder replaces the checkpoint, and its preprocessor_config.json sets the 32 px input size.
COMMON=(task=vision/imagefolder model=vit-base-in21k "model.name_or_path=$OUT/vit-small-cifar5"
        "data.root=$OUT/target_classes" data.batch_size=64 trainer=cpu "trainer.max_epochs=$EPOCHS"
        scheduler.warmup_steps=30 seed=42)

"$PYTHON" -m loldu_lightning "${COMMON[@]}" adapter=loldu optimizer.lr=3e-3 "hydra.run.dir=$OUT/runs/loldu"
"$PYTHON" -m loldu_lightning "${COMMON[@]}" adapter=lora adapter.rank=16 adapter.alpha=16 optimizer.lr=1e-3 \
  "hydra.run.dir=$OUT/runs/lora_r16"
"$PYTHON" -m loldu_lightning "${COMMON[@]}" adapter=linear_probe optimizer.lr=3e-3 "hydra.run.dir=$OUT/runs/linear_probe"

"$PYTHON" -m loldu_lightning.report "$OUT/runs" --by adapter  # writes $OUT/runs/results.md, CSVs and figures
