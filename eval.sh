#!/usr/bin/env bash
# Evaluate on the six open-vocabulary benchmarks (official protocol) and print a Markdown table.
#   sh eval.sh CONFIG NUM_GPUS OUTPUT_DIR [KEY VALUE ...]
# e.g. sh eval.sh configs/vitb_384.yaml 4 output/ MODEL.WEIGHTS model_base.pth
# BENCHMARKS="ade150 pc59" selects a subset ("synthetic" = the toy benchmark).
set -e
cd "$(dirname "$0")"
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
exec "$PY" tools/evaluate_benchmarks.py "$@"
