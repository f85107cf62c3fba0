#!/bin/bash
# The base-size study (README.md beside this file), one job at a time, resumable: every job writes into
# its own folder of docs/results/mpnet_study/runs, and resume.auto skips a job whose metrics.json says
# it completed with the same configuration (an interrupted job resumes from its newest checkpoint).
#   bash docs/results/mpnet_study/run.sh <stage>       (repository root, ../shared beside it)
# Stages: pilot | grid | seeds | report. Environment: TRAINER (cpu; gpu on a GPU machine),
# STUDY_LOCK (a lock file: each job waits for it, so no two measured jobs overlap), THREADS (2).
set -euo pipefail
here=docs/results/mpnet_study
out=${OUT:-$here/runs}
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2}
SST2=(task=glue/sst2)
QNLI=(task=glue/qnli data.train_from_dev=1000 data.val_limit=1000)
job() {  # one job (a sweep of one), logged with the machine's load before it
  echo "$(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg) :: $*" >> "$here/load.log"
  local cmd=(python -m loldu_lightning -m experiment=mpnet_study "trainer=${TRAINER:-cpu}" logger=csv
             "hydra.sweep.dir=$out" resume.auto=true "$@")
  if [ -n "${STUDY_LOCK:-}" ]; then flock "$STUDY_LOCK" "${cmd[@]}"; else "${cmd[@]}"; fi
}
arm() { echo "experiment/studies/mpnet_study_arm=$1"; }
case ${1:?stage} in
  pilot)  # the budget: does LoRA r=16 leave the majority class by more than the seed spread?
    for task in SST2 QNLI; do
      declare -n t=$task
      job "${t[@]}" "$(arm linear_probe)" optimizer.lr=4e-3 seed=0
      job "${t[@]}" "$(arm lora_r16)" seed=0
    done ;;
  grid)  # seed 0: each tuned arm's rate
    for task in SST2 QNLI; do
      declare -n t=$task
      job "${t[@]}" "$(arm svd_x30)" seed=0
      job "${t[@]}" "$(arm svd_x50)" seed=0
      for lr in 4e-4 1e-3 3e-3; do job "${t[@]}" "$(arm loldu_lu)" optimizer.lr=$lr seed=0; done
      for lr in 4e-4 1e-3 3e-3; do job "${t[@]}" "$(arm lora_r8)" optimizer.lr=$lr seed=0; done
      for lr in 4e-4 3e-3; do job "${t[@]}" "$(arm lora_r16)" optimizer.lr=$lr seed=0; done
      job "${t[@]}" "$(arm linear_probe)" optimizer.lr=1e-3 seed=0
    done ;;
  seeds)  # seeds 1 and 2 of every arm: the untuned at their rate, the tuned at their best seed-0 rate
    for task in SST2 QNLI; do
      declare -n t=$task
      name=$(echo "$task" | tr '[:upper:]' '[:lower:]')
      for seed in 1 2; do
        job "${t[@]}" "$(arm svd_x30)" seed=$seed
        job "${t[@]}" "$(arm svd_x50)" seed=$seed
        python "$here/pick_rates.py" "$out" "$name" | while read -r tuned lr; do
          job "${t[@]}" "$(arm "$tuned")" optimizer.lr="$lr" seed=$seed </dev/null
        done
      done
    done ;;
  report)  # the tables, figures and both decisions over the three seeds
    python -m loldu_lightning.report "$out" --by mpnet_study_arm,optimizer.lr --epoch final --min-seeds 3 \
      --reference mpnet_study_arm=svd_x30 --candidates mpnet_study_arm=svd_x50 --out "$here/report" ;;
  *) echo "unknown stage $1" >&2; exit 2 ;;
esac
