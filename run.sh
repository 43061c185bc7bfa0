#!/usr/bin/env bash
# Train, then evaluate on the six benchmarks (like the official run.sh).
#   sh run.sh CONFIG NUM_GPUS OUTPUT_DIR [KEY VALUE ...]
# A mistake in the arguments or the config stops it before training, with one "error: ..." line
# and exit status 2; the exit status is that of the first step that failed.
# Paths are taken from the folder you run it in (configs/... also from the repository's).
set -e
here=$(dirname "$0")
usage="usage: sh run.sh CONFIG NUM_GPUS OUTPUT_DIR [KEY VALUE ...]"
[ $# -ge 3 ] || { echo "error: expected CONFIG NUM_GPUS OUTPUT_DIR, got $# argument(s); $usage" >&2; exit 2; }
config=$1; gpus=$2; output=$3; shift 3
case "$gpus" in
  ''|*[!0-9]*|0) echo "error: NUM_GPUS '$gpus': expected a positive integer (processes); $usage" >&2; exit 2 ;;
esac
PY=${PY:-$( [ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python )}
export PY
# the evaluation's benchmarks (BENCHMARKS) and their data, checked before the training, not after it
"$PY" "$here/tools/evaluate_benchmarks.py" --check-benchmarks
# TRAIN_NET=my_train_net.py: your own script (registering your components) trains and evaluates
"$PY" "${TRAIN_NET:-$here/train_net.py}" --config-file "$config" --num-gpus "$gpus" --dist-url auto --resume OUTPUT_DIR "$output" "$@"
# the training's options go on to the evaluation, except those eval.sh sets per benchmark or by
# the protocol (DATASETS.TEST, TEST_CLASS_JSON, TEST.SLIDING_WINDOW, POOLING_SIZES) and the
# MODEL.WEIGHTS the training started from (the trained model is evaluated): left out, with a note
CATSEG_EVAL_AFTER_TRAINING=1 sh "$here/eval.sh" "$config" "$gpus" "$output" "$@"
