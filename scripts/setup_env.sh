#!/usr/bin/env bash
# Create (or update) the project's virtual environment with everything cat-seg needs.
#
#   scripts/setup_env.sh            # .venv next to this repository
#   VENV=/path/to/venv scripts/setup_env.sh
#   TORCH_SPEC="torch==2.5.1 torchvision==0.20.1" scripts/setup_env.sh   # another torch
#   DETECTRON2_SPEC="git+https://github.com/facebookresearch/detectron2.git" scripts/setup_env.sh
#
# Nothing is compiled: detectron2 comes from the pure-Python wheel `sal-detectron2`
# (upstream sources, 2024 snapshot) unless DETECTRON2_SPEC names another source. The
# script is idempotent: a second run with unchanged inputs only checks the stamp file.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
D2_WHEEL=${D2_WHEEL:-"sal-detectron2==0.7.2"}
DETECTRON2_SPEC=${DETECTRON2_SPEC:-}

# what must import for detectron2 to count as installed: its modules cat-seg uses (the package
# alone imports from a copy that an interrupted set-up left half-written)
D2_IMPORTS="import detectron2.config, detectron2.data, detectron2.engine, detectron2.evaluation, detectron2.modeling"
stamp="$VENV/.cat-seg-installed"
want=$(cat requirements.txt pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)
want="$want $TORCH_SPEC $D2_WHEEL $DETECTRON2_SPEC"
# the stamp, and an interpreter that still runs (its base Python removed or upgraded: rebuilt)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && "$VENV/bin/python" -c "import cat_seg, torch; $D2_IMPORTS" >/dev/null 2>&1; then
  exit 0
fi

echo "[setup] creating virtual environment in $VENV"
if ! "$VENV/bin/python" -c "" >/dev/null 2>&1; then
  "$PYTHON" -m venv --clear "$VENV"
fi
# a venv made without pip (interrupted, or --without-pip) gets it; else every re-run failed
"$VENV/bin/python" -m pip --version >/dev/null 2>&1 || "$VENV/bin/python" -m ensurepip --upgrade >/dev/null
PIP="$VENV/bin/python -m pip"
# pip, its "WARNING: Location" lines filtered out; a failed install stops the script
pip_quiet() {
  local status=0
  $PIP "$@" 2>&1 | { grep -v '^WARNING: Location' || true; } || status=$?  # pipefail: pip's status
  [ "$status" -eq 0 ] || { echo "[setup] error: pip $* failed (exit status $status)" >&2; exit "$status"; }
}
pip_quiet install -q --upgrade pip setuptools wheel
echo "[setup] installing $TORCH_SPEC"
pip_quiet install -q $TORCH_SPEC
echo "[setup] installing requirements.txt"
pip_quiet install -q -r requirements.txt

site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
if [ -n "$DETECTRON2_SPEC" ]; then
  echo "[setup] installing detectron2 from $DETECTRON2_SPEC"
  $PIP install -q --no-build-isolation "$DETECTRON2_SPEC"
elif ! "$VENV/bin/python" -c "$D2_IMPORTS" 2>/dev/null; then
  echo "[setup] installing detectron2 (pure Python) from $D2_WHEEL"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  pip_quiet install -q --no-deps --target "$tmp" --python-version 3.10 --only-binary=:all: "$D2_WHEEL"
  [ -d "$tmp/detectron2" ] || { echo "[setup] error: $D2_WHEEL did not provide detectron2/" >&2; exit 1; }
  # its compiled ops were built against another torch; CAT-Seg needs none of them
  rm -f "$tmp"/detectron2/_C*.so
  # copied beside its place, then renamed into it: a copy cut short never passes for detectron2
  rm -rf "$site/.detectron2.partial"
  cp -r "$tmp/detectron2" "$site/.detectron2.partial"
  rm -rf "$site/detectron2"
  mv "$site/.detectron2.partial" "$site/detectron2"
fi
echo "[setup] installing cat-seg (editable) with the app and test extras (gradio, pytest, selenium)"
pip_quiet install -q --no-build-isolation -e ".[app,test]"
"$VENV/bin/python" -c "import torch, detectron2, open_clip, gradio, pytest, cat_seg; print('[setup] ok: torch', torch.__version__, '| detectron2', detectron2.__version__, '| open_clip', open_clip.__version__)"
echo "$want" > "$stamp"
