#!/bin/bash
# LoLDU r=768 (alpha 768, q,v) against LoRA r=8, LoRA r=16 and a linear probe on the real
# all-mpnet-base-v2, seed 0, one job at a time (Hydra's basic launcher runs a sweep sequentially).
#   bash docs/results/mpnet_glue/run.sh <task> <out dir> [extra overrides...]
# Environment: TRAINER (cpu), SEEDS (0; e.g. 0,1,2), TRAIN_LIMIT (64), VAL_LIMIT (128), EPOCHS (1), GLUE_ROOT (../shared/data/glue),
# ARMS (loldu,lora,linear_probe: methods of experiment/paper/table1_glue_method), LORA_R16 (1: also LoRA r=16).
# The paper's settings come from experiment=paper/glue_<task> (batch 32, warmup 0.06, Table VII's
# rates for LoLDU, each method file's rates for the others); the budget is the overrides below.
set -euo pipefail
task=$1; out=$2; shift 2
budget=(trainer=${TRAINER:-cpu} data.glue_root=${GLUE_ROOT:-../shared/data/glue} data.max_length=128
        data.train_limit=${TRAIN_LIMIT:-64} data.val_limit=${VAL_LIMIT:-128} trainer.max_epochs=${EPOCHS:-1}
        seed=${SEEDS:-0} callbacks.lr_monitor=false)
run() {  # a sweep, with the machine's load before it
  echo "$(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg) :: $*" >> "$out/load.log"
  python -m loldu_lightning -m "experiment=paper/glue_$task" model=mpnet-base "${budget[@]}" "$@"
}
mkdir -p "$out"
run "experiment/paper/table1_glue_method=${ARMS:-loldu,lora,linear_probe}" "hydra.sweep.dir=$out/$task" "$@"
if [ "${LORA_R16:-1}" = 1 ]; then
  run experiment/paper/table1_glue_method=lora adapter.rank=16 adapter.alpha=16 "hydra.sweep.dir=$out/${task}_lora_r16" "$@"
fi
echo "$(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg) :: done" >> "$out/load.log"
