#!/usr/bin/env bash
# Evaluate on the six open-vocabulary benchmarks (official protocol) and print a Markdown table.
#   sh eval.sh CONFIG NUM_GPUS OUTPUT_DIR [KEY VALUE ...]
# e.g. sh eval.sh configs/vitb_384.yaml 4 output/ MODEL.WEIGHTS model_base.pth
# BENCHMARKS="ade150 pc59" selects a subset ("synthetic" = the toy benchmark).
# TRAIN_NET=my_train_net.py runs your own train_net script (registering your components) per benchmark.
# The arguments, the config and the checkpoint are checked once before any benchmark starts
# (a mistake: one "error: ..." line, exit status 2). Benchmarks without data are skipped; the
# exit status is 1 when a benchmark failed for another reason. The last line on stderr counts
# the evaluated, skipped and failed benchmarks.
# Paths are taken from the folder you run it in (configs/... also from the repository's).
set -e
here=$(dirname "$0")
PY=${PY:-$( [ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python )}
exec "$PY" "$here/tools/evaluate_benchmarks.py" "$@"
