#!/usr/bin/env bash
# One command that checks every GPU path and leaves a record: the GPU tests (python -m pytest -m gpu)
# and the GPU benchmarks (benchmarks/run.py --device cuda --quick), plus nvidia-smi and the versions,
# all under one folder. Sized for about 15 minutes of GPU time: it finishes within 8 minutes on one
# modern GPU (each part has its own time limit below). See docs/gpu.md.
#
#   bash scripts/gpu_check.sh [--dry-run] [--bundle DIR] [--setup-only] [--out DIR]
#
# --dry-run:    the same tests and benchmark code on the CPU at tiny sizes (about a minute on 2 cores);
#               CI runs it (tests/test_gpu_check.py) so the check cannot rot while no GPU is at hand.
# --bundle DIR: first install the bundle made by scripts/gpu_bundle.sh DIR (for a machine with no network
#               and no project environment): pip install --no-index --no-deps --target <temp folder>, put
#               first on PYTHONPATH, over the machine's own packages; its torch is never replaced.
# --setup-only: install the bundle (if any) and record the environment, then stop (seconds).
# --out DIR:    where everything goes (default outputs/gpu_check/<UTC time>[-dry-run]).
# Exit status: 0 when both parts passed, 1 otherwise (the record is written either way), 2 on bad usage
# or a bundle that cannot be used.
set -uo pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

mode=gpu
out=""
bundle=""
setup_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) mode=dry-run; shift ;;
    --bundle) [ $# -ge 2 ] || { echo "gpu_check.sh: --bundle needs the folder scripts/gpu_bundle.sh made" >&2; exit 2; }; bundle="$2"; shift 2 ;;
    --bundle=*) bundle="${1#--bundle=}"; shift ;;
    --setup-only) setup_only=1; shift ;;
    --out) [ $# -ge 2 ] || { echo "gpu_check.sh: --out needs a folder" >&2; exit 2; }; out="$2"; shift 2 ;;
    --out=*) out="${1#--out=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

if [ -n "$bundle" ]; then
  [ -f "$bundle/BUNDLE.md" ] || { echo "gpu_check.sh: --bundle $bundle: no BUNDLE.md there; make the bundle with 'bash scripts/gpu_bundle.sh DIR' and copy DIR here" >&2; exit 2; }
  bundle="$(cd "$bundle" && pwd)"
fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
PYTHON="${PYTHON:-python}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "gpu_check.sh: '$PYTHON' not found; activate the project's environment or set PYTHON=/path/to/python" >&2
  exit 2
fi
if [ "$mode" = gpu ] && ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check.sh: no CUDA device (torch.cuda.is_available() is False); run 'bash scripts/gpu_check.sh --dry-run' to check the same code on the CPU" >&2
  exit 2
fi
# --- the bundle: installed before anything is written, so a bundle that cannot be used leaves no record --
if [ -n "$bundle" ]; then
  site="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_site.XXXXXX")"
  trap 'rm -rf "$site" "$site.txt"' EXIT
  echo "gpu_check: installing the bundle $bundle into $site"
  "$PYTHON" scripts/gpu_bundle.py install "$bundle" "$site" --repo "$repo" --record "$site.txt" > /dev/null || exit 2
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PATH="$site/bin:$PATH" LOLDU_GPU_BUNDLE_SITE="$site"
  # tiny-roberta borrows MiniLM's tokenizer; the bundle carries its files instead of the 90 MB package
  [ -d "$bundle/tokenizers/minilm" ] && export LOLDU_GPU_MINILM_TOKENIZER="$bundle/tokenizers/minilm"
fi

suffix=""; [ "$mode" = dry-run ] && suffix="-dry-run"
out="${out:-outputs/gpu_check/$(date -u +%Y-%m-%dT%H-%M-%SZ)$suffix}"
mkdir -p "$out/pytest" "$out/benchmarks" "$out/environment"
out="$(cd "$out" && pwd)"
[ -n "$bundle" ] && cp "$site.txt" "$out/environment/bundle.txt"

# Time limits per part (seconds). On a GPU: tests 270 + benchmarks 150 + the rest < 8 minutes.
# The dry run's limits only stop a hung run: a shared CI machine may be several times slower than idle.
if [ "$mode" = gpu ]; then
  pytest_limit=270; bench_limit=150
  export LOLDU_GPU_DRY_RUN=0
  bench_args=(--device cuda --quick)
else
  pytest_limit=600; bench_limit=300
  export LOLDU_GPU_DRY_RUN=1
  bench_args=(--dry-run --threads 2)
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

echo "gpu_check ($mode): writing to $out"

# --- environment ------------------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1; then
  { nvidia-smi; echo; nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv; } \
    > "$out/environment/nvidia-smi.txt" 2>&1
else
  echo "nvidia-smi: not found on this machine" > "$out/environment/nvidia-smi.txt"
fi
"$PYTHON" - > "$out/environment/versions.txt" 2>&1 <<'PY'
import importlib.metadata as metadata
import os
import platform
from pathlib import Path

import torch

# where each package comes from: the bundle's folder (gpu_check.sh --bundle) or the machine's own environment
site = os.environ.get("LOLDU_GPU_BUNDLE_SITE")


def origin(package: str) -> str:
    if not site:
        return ""
    location = Path(str(metadata.distribution(package).locate_file(""))).resolve()
    return " (bundle)" if location == Path(site).resolve() else " (machine)"


print(f"python: {platform.python_version()} ({platform.platform()})")
torch_origin = " (machine)" if site else ""
if site and Path(site).resolve() in Path(torch.__file__).resolve().parents:
    torch_origin = " (bundle: NOT the machine's torch)"
print(f"torch: {torch.__version__} (built for CUDA {torch.version.cuda}){torch_origin}")
print(f"cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"cudnn: {torch.backends.cudnn.version()}")
    print(f"nccl: {'.'.join(map(str, torch.cuda.nccl.version())) if torch.distributed.is_nccl_available() else 'n/a'}")
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        print(f"gpu {index}: {props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability {props.major}.{props.minor}")
packages = ("loldu-lightning", "torchvision", "lightning", "torchmetrics", "transformers", "tokenizers", "safetensors",
            "peft", "accelerate", "diffusers", "hydra-core", "omegaconf", "torchdata", "pytest")
for package in packages:
    try:
        print(f"{package}: {metadata.version(package)}{origin(package)}")
    except metadata.PackageNotFoundError:
        print(f"{package}: not installed")
PY
# pip reads sys.path, so with a bundle the freeze lists its packages too: what the check ran with
"$PYTHON" -m pip freeze > "$out/environment/pip-freeze.txt" 2>&1 || true
if [ "$setup_only" = 1 ]; then
  cat "$out/environment/versions.txt"
  [ -n "$bundle" ] && cat "$out/environment/bundle.txt"
  echo "gpu_check: --setup-only: the environment is recorded under $out/environment; the tests and benchmarks did not run"
  exit 0
fi

# --- part 1: the GPU tests -----------------------------------------------------------------------------
echo "gpu_check: pytest -m gpu (limit ${pytest_limit} s)"
start=$SECONDS
timeout --kill-after=20 "$pytest_limit" "$PYTHON" -m pytest -m gpu tests/gpu -p no:cacheprovider -q -rA \
  --durations=15 --junitxml="$out/pytest/junit.xml" -o junit_family=xunit2 > "$out/pytest/output.log" 2>&1
pytest_status=$?
pytest_seconds=$((SECONDS - start))
tail -n 3 "$out/pytest/output.log"

# --- part 2: the GPU benchmarks ------------------------------------------------------------------------
echo "gpu_check: benchmarks/run.py ${bench_args[*]} (limit ${bench_limit} s)"
start=$SECONDS
timeout --kill-after=20 "$bench_limit" "$PYTHON" benchmarks/run.py "${bench_args[@]}" \
  --note "scripts/gpu_check.sh ($mode)" --out "$out/benchmarks/RESULTS.md" > "$out/benchmarks/output.log" 2>&1
bench_status=$?
bench_seconds=$((SECONDS - start))
tail -n 3 "$out/benchmarks/output.log"

# --- summary -----------------------------------------------------------------------------------------
"$PYTHON" scripts/gpu_check_summary.py "$out" --mode "$mode" \
  --pytest-status "$pytest_status" --pytest-seconds "$pytest_seconds" \
  --bench-status "$bench_status" --bench-seconds "$bench_seconds"
echo "gpu_check: everything is under $out"
[ "$pytest_status" -eq 0 ] && [ "$bench_status" -eq 0 ]
exit $?
