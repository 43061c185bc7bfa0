#!/usr/bin/env bash
# Train, then evaluate on the six benchmarks (like the official run.sh).
#   sh run.sh CONFIG NUM_GPUS OUTPUT_DIR [KEY VALUE ...]
set -e
cd "$(dirname "$0")"
[ $# -ge 3 ] || { echo "usage: sh run.sh CONFIG NUM_GPUS OUTPUT_DIR [KEY VALUE ...]" >&2; exit 2; }
config=$1; gpus=$2; output=$3; shift 3
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
"$PY" train_net.py --config-file "$config" --num-gpus "$gpus" --dist-url auto --resume OUTPUT_DIR "$output" "$@"
sh eval.sh "$config" "$gpus" "$output" "$@"
