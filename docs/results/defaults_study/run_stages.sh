#!/bin/bash
# Stages 1 and 2 of the defaults study (README.md beside this file): every job that ran, in the order it
# started. The study ran them from a queue, two single-thread jobs at a time; run here one after another.
#   bash docs/results/defaults_study/run_stages.sh [sweep dir]     (repository root, ../shared beside it)
set -euo pipefail
out=${1:-multirun/defaults_study}
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
run() {  # <tag> <overrides...>: one job in its own sub-directory <tag>_0 of the sweep
  local tag=$1; shift
  python -m loldu_lightning -m experiment=minilm_gap logger=csv hydra/launcher=basic "hydra.sweep.dir=$out" \
    "hydra.sweep.subdir=${tag}_\${hydra.job.num}" "$@"
}
SST2=(task=glue/sst2); MRPC=(task=glue/mrpc); QNLI=(task=glue/qnli data.train_from_dev=4000)
LU=(experiment/studies/minilm_gap_arm=loldu_lr1e-3)
SVD=(experiment/studies/minilm_gap_arm=loldu_lr3e-2_h1e-3 adapter.decomposition=svd)
QR=(experiment/studies/minilm_gap_arm=loldu_lr3e-2_h1e-3 adapter.decomposition=qr optimizer.lr=2e-2)
ALL_LINEAR=(experiment/studies/minilm_gap_arm=loldu_all_linear_lr1e-3 optimizer.lr=3e-4 optimizer.head_lr=1e-3)
COSINE=(experiment/studies/minilm_gap_arm=loldu_lr1e-3 scheduler=cosine)
LORA=(experiment/studies/minilm_gap_arm=lora_r16)
seeds_1_and_2() {  # <task tag> <task overrides...>: stage 2, the defaults and svd at seeds 1 and 2
  local task=$1; shift
  for seed in 1 2; do
    run "s$seed-$task-lu" "$@" seed=$seed "${LU[@]}"
    run "s$seed-$task-svd" "$@" seed=$seed "${SVD[@]}"
  done
}

# stage 1: seed 0
run s0-mrpc-lu "${MRPC[@]}" seed=0 "${LU[@]}"
run s0-mrpc-svd "${MRPC[@]}" seed=0 "${SVD[@]}"
run s0-sst2-lu "${SST2[@]}" seed=0 "${LU[@]}"
run s0-sst2-svd "${SST2[@]}" seed=0 "${SVD[@]}"
run s0-sst2-qr "${SST2[@]}" seed=0 "${QR[@]}"
run s0-qnli-lu "${QNLI[@]}" seed=0 "${LU[@]}"
run s0-qnli-svd "${QNLI[@]}" seed=0 "${SVD[@]}"
run s0-qnli-qr "${QNLI[@]}" seed=0 "${QR[@]}"
run s0-mrpc-qr "${MRPC[@]}" seed=0 "${QR[@]}"
# stage 2: seeds 1 and 2 of the defaults and of svd, the first candidate above the defaults' seed-0 mean
seeds_1_and_2 sst2 "${SST2[@]}"
seeds_1_and_2 qnli "${QNLI[@]}"
# the LoRA r=16 reference and the question-2 candidates, seed 0
run s0-sst2-lora1e-3 "${SST2[@]}" seed=0 "${LORA[@]}"
run s0-sst2-lora3e-3 "${SST2[@]}" seed=0 "${LORA[@]}" optimizer.lr=3e-3
run s0-sst2-alllinear "${SST2[@]}" seed=0 "${ALL_LINEAR[@]}"
run s0-sst2-cosine "${SST2[@]}" seed=0 "${COSINE[@]}"
# stage 2 on MRPC: seeds 1 and 2 of the defaults and of svd
seeds_1_and_2 mrpc "${MRPC[@]}"

python -m loldu_lightning.report "$out" --by adapter.name,adapter.decomposition,optimizer.lr,scheduler.name \
  --epoch final --reference adapter.name=loldu,adapter.decomposition=lu,optimizer.lr=1e-3,scheduler.name=linear \
  --candidates adapter.name=loldu --min-seeds 3 --out docs/results/defaults_study/stages_1_2
