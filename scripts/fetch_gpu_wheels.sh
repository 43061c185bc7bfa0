#!/usr/bin/env bash
# Download the Python packages cat-seg needs on a GPU machine that has torch but cannot reach
# a package index (the lent device machines: Python 3.12, x86-64, torch/torchvision, numpy,
# opencv, scipy, timm, huggingface_hub, regex, tabulate, pyyaml, portalocker, cloudpickle
# preinstalled). Run here, where PyPI is reachable; the folder is then carried along
# (`carry: [".gpu_wheels"]`) and installed by tools/gpu_benchmark.sh without network.
#
#   scripts/fetch_gpu_wheels.sh              # -> .gpu_wheels/ (ignored by git)
#   WHEELS=/path PY_VERSION=3.12 scripts/fetch_gpu_wheels.sh
#
# Versions are those of the local environment (the ones the tests ran with) where it has
# the package, else the newest. Pure-Python packages published only as source archives
# (fvcore, iopath, antlr4-python3-runtime) are built into wheels here. detectron2 is the
# pure-Python `sal-detectron2` wheel of scripts/setup_env.sh, unpacked into
# $WHEELS/site/detectron2 without its compiled ops (built against another torch; CAT-Seg
# uses none of them).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.gpu_wheels}
PY_VERSION=${PY_VERSION:-3.12}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
PYTHON=$("$PYTHON" -c "import sys; print(sys.executable)")  # absolute: used from other folders
D2_WHEEL=${D2_WHEEL:-"sal-detectron2==0.7.2"}
# not on the device image (KINDS.md package list): cat-seg's and detectron2's runtime needs
PACKAGES="open_clip_torch ftfy wcwidth fvcore iopath omegaconf hydra-core antlr4-python3-runtime yacs termcolor pycocotools"
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"

pinned() {  # NAME -> NAME==VERSION of the local environment, or NAME
  local version
  version=$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null) \
    && echo "$1==$version" || echo "$1"
}

mkdir -p "$WHEELS"
rm -f "$WHEELS"/*.whl
for name in $PACKAGES; do
  spec=$(pinned "$name")
  if ! "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
      --implementation cp $PLATFORMS -d "$WHEELS" "$spec" 2>/dev/null; then
    echo "[fetch] $spec: no wheel for Python $PY_VERSION, building one from the source archive"
    "$PYTHON" -m pip wheel -q --no-deps --no-binary=:all: -w "$WHEELS" "$spec"
  fi
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 -d "$tmp" "$D2_WHEEL"
rm -rf "$WHEELS/site" && mkdir -p "$WHEELS/site"
(cd "$WHEELS/site" && "$PYTHON" -m zipfile -e "$tmp"/*.whl .)
find "$WHEELS/site" -maxdepth 1 -mindepth 1 ! -name detectron2 -exec rm -rf {} +
rm -f "$WHEELS"/site/detectron2/_C*.so
[ -f "$WHEELS/site/detectron2/__init__.py" ] || { echo "[fetch] error: $D2_WHEEL did not provide detectron2/" >&2; exit 1; }
ls "$WHEELS"/*.whl | sed 's|.*/|[fetch] |'
echo "[fetch] detectron2 (pure Python) in $WHEELS/site; total $(du -sh "$WHEELS" | cut -f1)"
