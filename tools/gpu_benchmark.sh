#!/usr/bin/env bash
# The GPU measurements of cat-seg in ONE command, for a session that is lent a GPU machine
# (torch preinstalled, no package index; see docs/benchmarks.md, section GPU):
#
#   here:   scripts/fetch_gpu_wheels.sh                      # once: .gpu_wheels/ (ignored by git)
#   device: run(command="OUT=$OUT TIME_LIMIT=480 tools/gpu_benchmark.sh", carry=[".gpu_wheels"], timeout_s=560)
#           (a session has 15 minutes of device time, the machine's start included: one such
#           call; the steps run in order of importance until TIME_LIMIT)
#
# Steps bf16_agreement_cuda, toy_eval and toy_eval_graphs also need the toy run's checkpoint
# and val split (make demo here), carried beside the wheels (about 11 MB):
#   carry=[".gpu_wheels", "output/toy/model_final.pth", "datasets/synthetic_val.json",
#          "datasets/synthetic/synthetic_info.json", "datasets/synthetic/images/val",
#          "datasets/synthetic/annotations/val"]
#
# It installs the carried wheels into /tmp/site, then runs the benchmark commands in order of
# importance under a total time limit, and writes into $OUT (at most 7 files):
#   results.jsonl   every JSON line of cat-seg-benchmark (field "tag" names the step)
#   summary.md      one table row per timing record, and the counted work
#   steps.tsv       step, status (ok | failed rc | skipped), seconds
#   log.txt         stderr of every step
#   env.txt         nvidia-smi, python, torch, packages
#   profile_infer.txt, profile_train.txt   torch.profiler tables (top ops by self CUDA time)
# and runs the CUDA-only tests (step cuda_tests) and the bf16 label agreement of the toy model
# on the GPU (step bf16_agreement_cuda), output in log.txt.
#
# Environment:
#   OUT          output folder (default /tmp/gpu_benchmark_out)
#   TIME_LIMIT   seconds for everything (default 530: one device command may run 600)
#   WHEELS       carried wheels (default .gpu_wheels; absent: use the installed packages)
#   PYTHON       default python3
#   DEVICE       cuda (default; cpu with SMOKE=1) | cpu
#   SMOKE=1      tiny CPU config, 1 iteration, no compile/CUDA graphs/ViT-L (tests the script)
#   DRY_RUN=1    print the steps, run nothing
#   ONLY="a b"   run only these steps (names as in steps.tsv)
#   STEP_ENV="VAR=value ..."  environment variables for every benchmark step (one step sets its own)
#   TOY_DIR      the toy run's OUTPUT_DIR for step toy_eval (default output/toy: make demo)
#   PRECOMPILE   1 (default on CUDA, not with SMOKE) | 0: first compile the main steps' graphs
#                all at once (see precompile below); PRECOMPILE_LIMIT seconds at most (300)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_benchmark_out}
TIME_LIMIT=${TIME_LIMIT:-530}
WHEELS=${WHEELS:-.gpu_wheels}
PYTHON=${PYTHON:-python3}
SMOKE=${SMOKE:-0}
DEVICE=${DEVICE:-$([ "$SMOKE" = 1 ] && echo cpu || echo cuda)}
DRY_RUN=${DRY_RUN:-0}
ONLY=${ONLY:-}
TOY_DIR=${TOY_DIR:-output/toy}
PRECOMPILE_LIMIT=${PRECOMPILE_LIMIT:-300}
if [ -z "${PRECOMPILE:-}" ]; then
  PRECOMPILE=0; [ "$DEVICE" = cuda ] && [ "$SMOKE" != 1 ] && PRECOMPILE=1
fi
# ONLY's names are checked against the steps (a dry run of this script lists them): a
# misspelt name would otherwise run nothing and spend a device call on an empty table
if [ -n "$ONLY" ] && [ "$DRY_RUN" != 1 ]; then
  known=$(DRY_RUN=1 ONLY= SMOKE="$SMOKE" DEVICE="$DEVICE" bash "$0" | sed -n 's/^\([A-Za-z0-9_]*\): .*/\1/p')
  for name in $ONLY; do
    if ! grep -qx "$name" <<< "$known"; then
      echo "error: ONLY: unknown step '$name'; the steps: $(echo $known)" >&2
      exit 2
    fi
  done
fi
start=$(date +%s)
deadline=$((start + TIME_LIMIT))
if [ "$DRY_RUN" != 1 ]; then
  mkdir -p "$OUT"
  : > "$OUT/results.jsonl"
  : > "$OUT/log.txt"
  printf 'step\tstatus\tseconds\n' > "$OUT/steps.tsv"
fi
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore

if [ "$DRY_RUN" != 1 ]; then
  if [ -d "$WHEELS" ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEELS"/*.whl >> "$OUT/log.txt" 2>&1 || { echo "wheel install failed (see log.txt)"; exit 1; }
    [ -d "$WHEELS/site" ] && cp -r "$WHEELS"/site/. /tmp/site/
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
  {
    date -u
    nvidia-smi 2>&1 | head -15 || true
    "$PYTHON" -c "import sys, torch, detectron2, open_clip, cat_seg; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'); print('detectron2', detectron2.__version__, 'open_clip', open_clip.__version__)"
    git log --oneline -1 2>/dev/null || true
  } > "$OUT/env.txt" 2>&1
  if ! grep -q '^torch' "$OUT/env.txt"; then
    echo "imports failed:"; cat "$OUT/env.txt"; exit 1
  fi
fi

if [ "$SMOKE" = 1 ]; then
  VITB="--config-file configs/quick_schedules/tiny_vitb_cpu.yaml --size 170 230 --crop 128"
  VITL=""
  ITERS="--iters 1 --warmup 0"
  BIG=40
  TRAIN_BATCH=2
  PRECISION="--precision fp32"
else
  VITB="--config-file configs/vitb_384.yaml"
  VITL="--config-file configs/vitl_336.yaml"
  ITERS="--iters 10 --warmup 3"
  BIG=847
  TRAIN_BATCH=4
  PRECISION=""  # MODEL.PRECISION of the config (auto: bf16 on the GPU)
fi
BENCH="$PYTHON tools/benchmark.py --device $DEVICE"
# Inference is measured with CUDA graphs (the speed setting, as runs 2 and 3 measured it; the
# default TEST.CUDA_GRAPHS is False until the compiled + graphed replay test passes).
GRAPHS="--cuda-graphs"
[ "$SMOKE" = 1 ] && GRAPHS=""  # the smoke run: no CUDA graphs (as the header says)
# The main steps' arguments (without the iteration counts), for both their precompilation
# and their measurement.
declare -A ARGS=(
  [vitb_infer_150]="--mode infer --classes 150 $VITB $PRECISION $GRAPHS"
  [vitb_train_b$TRAIN_BATCH]="--mode train --batch $TRAIN_BATCH --classes 171 $VITB $PRECISION"
  [vitb_infer_$BIG]="--mode infer --classes $BIG $VITB $PRECISION $GRAPHS"
)
if [ "$SMOKE" != 1 ]; then
  ARGS[vitl_infer_150]="--mode infer --classes 150 $VITL $GRAPHS"
  ARGS[vitl_train_b4]="--mode train --batch 4 --classes 171 $VITL"
fi

# What the step kinds below share. selected NAME: the step is in ONLY (or ONLY is empty).
# has_time NAME NEED: sets the caller's `left` to the seconds left; false, with a "skipped"
# line in steps.tsv, when fewer than NEED are left. finished NAME RC T0: its status line.
selected() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }
has_time() {
  left=$((deadline - $(date +%s)))
  [ "$left" -ge "$2" ] && return 0
  printf '%s\tskipped (%ss left)\t0\n' "$1" "$left" >> "$OUT/steps.tsv"
  echo "$1: skipped ($left s left, $2 needed)"
  return 1
}
finished() {
  local status=ok; [ "$2" = 0 ] || status="failed $2"
  printf '%s\t%s\t%s\n' "$1" "$status" "$(( $(date +%s) - $3 ))" >> "$OUT/steps.tsv"
  echo "$1: $status ($(( $(date +%s) - $3 )) s)"
}

# step NAME MIN_SECONDS ARGS...: run one benchmark command if MIN_SECONDS are left; it is
# stopped at the deadline. Its JSON line goes to results.jsonl, its stderr to log.txt.
# STEP_ENV="VAR=value ..." before it sets environment variables for that command only (the
# record lists the TORCHINDUCTOR_* ones in its field inductor_env).
step() {
  local name=$1 need=$2; shift 2
  local left t0 env_prefix=${STEP_ENV:+$STEP_ENV }
  selected "$name" || return 0
  if [ "$DRY_RUN" = 1 ]; then echo "$name: $env_prefix$BENCH --tag $name $*"; return; fi
  has_time "$name" "$need" || return 0
  echo "=== $name: $env_prefix$*" >> "$OUT/log.txt"
  t0=$(date +%s)
  env ${STEP_ENV:-} timeout --kill-after=10 "$left" $BENCH --tag "$name" "$@" >> "$OUT/results.jsonl" 2>> "$OUT/log.txt"
  finished "$name" $? "$t0"
}

# check NAME MIN_SECONDS PYTEST_ARGS...: tests that need CUDA, output to log.txt
check() {
  local name=$1 need=$2 left t0
  shift 2
  selected "$name" || return 0
  if [ "$DRY_RUN" = 1 ]; then echo "$name: pytest $*"; return; fi
  has_time "$name" "$need" || return 0
  echo "=== $name" >> "$OUT/log.txt"
  t0=$(date +%s)
  timeout --kill-after=10 "$left" "$PYTHON" -m pytest -q -s -p no:cacheprovider -rs "$@" >> "$OUT/log.txt" 2>&1
  finished "$name" $? "$t0"
}

# precompile NAMES...: the selected main steps among NAMES run at once, each in a background
# process for one iteration (--iters 1 --warmup 0), before they are measured one by one:
# their compilations (about 1-2 minutes each on the H200's host, mostly single-threaded Python)
# overlap, and fill inductor's on-disk cache, from which the measured step's first call then
# loads its graphs. Each writes a record tagged NAME_cold (first_call_s: the cold compilation,
# slowed by the others beside it) and a status line; all are stopped after PRECOMPILE_LIMIT
# seconds (a step whose compilation was cut compiles the rest when it is measured).
precompile() {
  local name names=() pids=() left t0 budget threads i rc tmp
  [ "$PRECOMPILE" = 1 ] || return 0
  for name in "$@"; do
    if selected "$name" && [ -n "${ARGS[$name]:-}" ]; then names+=("$name"); fi
  done
  [ "${#names[@]}" -gt 0 ] || return 0
  if [ "$DRY_RUN" = 1 ]; then
    for name in "${names[@]}"; do echo "${name}_cold: (at once) $BENCH --tag ${name}_cold ${ARGS[$name]} --iters 1 --warmup 0"; done
    return
  fi
  has_time precompile 120 || return 0
  budget=$(( left < PRECOMPILE_LIMIT ? left : PRECOMPILE_LIMIT ))
  threads=$(( $(nproc) / ${#names[@]} )); [ "$threads" -ge 2 ] || threads=2
  tmp=$(mktemp -d)
  t0=$(date +%s)
  for name in "${names[@]}"; do
    env ${STEP_ENV:-} TORCHINDUCTOR_COMPILE_THREADS=$threads timeout --kill-after=10 "$budget" \
        $BENCH --tag "${name}_cold" ${ARGS[$name]} --iters 1 --warmup 0 \
        > "$tmp/$name.jsonl" 2> "$tmp/$name.log" &
    pids+=($!)
  done
  for i in "${!names[@]}"; do
    name=${names[$i]}
    wait "${pids[$i]}"; rc=$?
    cat "$tmp/$name.jsonl" >> "$OUT/results.jsonl"
    { echo "=== ${name}_cold (precompile, ${#names[@]} at once): ${STEP_ENV:+$STEP_ENV }${ARGS[$name]}"
      cat "$tmp/$name.log"; } >> "$OUT/log.txt"
    finished "${name}_cold" "$rc" "$t0"
  done
  rm -rf "$tmp"
}

# toy_eval NAME MIN_SECONDS [KEY VALUE ...]: eval.sh's evaluation of the toy model on the
# synthetic benchmark on $DEVICE with the defaults there (on CUDA: batches of 8 images,
# compiled, bf16) and the options given; its table goes to log.txt, a record of kind "eval" with the evaluator's throughput
# (images/s without the first batch) to results.jsonl. Skipped without $TOY_DIR/model_final.pth.
toy_eval() {
  local name=$1 need=$2 left t0 rc result
  shift 2
  local cmd="$PYTHON tools/evaluate_benchmarks.py configs/quick_schedules/toy_synthetic.yaml 1 $TOY_DIR \
MODEL.SEM_SEG_HEAD.CLIP_WEIGHTS none MODEL.DEVICE $DEVICE MODEL.PRECISION auto $*"
  selected "$name" || return 0
  if [ "$DRY_RUN" = 1 ]; then echo "$name: BENCHMARKS=synthetic $cmd"; return; fi
  has_time "$name" "$need" || return 0
  if [ ! -f "$TOY_DIR/model_final.pth" ]; then
    printf '%s\tskipped (no %s/model_final.pth: make demo, then carry it)\t0\n' "$name" "$TOY_DIR" >> "$OUT/steps.tsv"
    return
  fi
  echo "=== $name: BENCHMARKS=synthetic $cmd" >> "$OUT/log.txt"
  t0=$(date +%s)
  BENCHMARKS=synthetic timeout --kill-after=10 "$left" $cmd >> "$OUT/log.txt" 2>&1
  rc=$?
  result="$TOY_DIR/eval/synthetic/inference/synthetic_val_sem_seg/sem_seg_results.json"
  if [ "$rc" = 0 ]; then
    "$PYTHON" - "$result" "$name" "$DEVICE" >> "$OUT/results.jsonl" 2>> "$OUT/log.txt" <<'PY' || rc=1
import json, sys
r = json.load(open(sys.argv[1]))
print(json.dumps({"kind": "eval", "tag": sys.argv[2], "device": sys.argv[3], "dataset": r["dataset"],
                  "num_images": r["num_images"], "mIoU": r["metrics"]["mIoU"], "throughput": r["throughput"]}))
PY
  fi
  finished "$name" "$rc" "$t0"
}

# In order of importance: the issue's targets with the defaults first (on CUDA: bf16,
# MODEL.COMPILE auto = compiled aggregator; inference with CUDA graphs ($GRAPHS); ViT-L before the 847-class
# ViT-B inference, which run 2 measured and ViT-L was not), then the eager model for
# comparison (EAGER), then the rest. Each step is a fresh process: a compiled step's
# first_call_s includes the compilation, or the reuse of inductor's on-disk cache
# (/tmp/torchinductor_$USER) that an earlier step of the same shapes left. A session's device
# time (15 minutes, the machine's start included) holds one call of about 8 minutes: select
# the steps with ONLY (they run in this order).
EAGER="--no-compile --no-cuda-graphs"
[ "$SMOKE" = 1 ] && EAGER=""
MAIN="vitb_infer_150 vitb_train_b$TRAIN_BATCH vitl_infer_150 vitl_train_b4 vitb_infer_$BIG"
precompile $MAIN
for name in $MAIN; do
  [ -n "${ARGS[$name]:-}" ] || continue  # ViT-L: not with SMOKE
  case $name in *train*|vitl*) need=60 ;; *) need=40 ;; esac
  step "$name" "$need" ${ARGS[$name]} $ITERS
done
# graph capture/replay, inductor on CUDA, the fp32/bf16 CUDA paths against CPU/fp32
[ "$SMOKE" = 1 ] || check cuda_tests 60 tests/perf/test_cuda_graphs.py tests/perf/test_cuda_model.py
# the toy model's bf16 labels against fp32 on the GPU (skipped unless the toy files are carried)
[ "$SMOKE" = 1 ] || check bf16_agreement_cuda 40 tests/perf/test_bf16_agreement.py -k cuda
# evaluation throughput on the synthetic benchmark (eval.sh, the toy model; needs the carried toy files)
[ "$SMOKE" = 1 ] || toy_eval toy_eval 40
# the same with CUDA graphs (the speed setting): a stale replay would show in the mIoU
[ "$SMOKE" = 1 ] || toy_eval toy_eval_graphs 40 TEST.CUDA_GRAPHS True
step vitb_infer_150_eager 30 --mode infer --classes 150 $VITB $PRECISION $ITERS $EAGER
step vitb_train_b${TRAIN_BATCH}_eager 30 --mode train --batch $TRAIN_BATCH --classes 171 $VITB $PRECISION $ITERS $EAGER
# the estimated peak memory of the same eager step (--count's "memory"), beside the measured one
step vitb_count_train_b$TRAIN_BATCH 40 --mode train --batch $TRAIN_BATCH --classes 171 $VITB $PRECISION --count --warmup 1
if [ "$SMOKE" != 1 ]; then
  # the same shapes again in a new process: first_call_s with inductor's on-disk cache
  step vitb_infer_150_cached     30 --mode infer --classes 150 $VITB $ITERS $GRAPHS
  # evaluation throughput: 8 images (40 views) per forward, TEST.IMS_PER_BATCH auto on CUDA
  step vitb_infer_150_b8         40 --mode infer --classes 150 --batch 8 $VITB $ITERS $GRAPHS
  step vitb_infer_150_nographs   30 --mode infer --classes 150 $VITB $ITERS --no-cuda-graphs
  # the CLIP image tower compiled too (MODEL.COMPILE compiles the aggregator): does it help?
  step vitb_infer_150_compile_clip 40 --mode infer --classes 150 $VITB $ITERS --compile-clip $GRAPHS
  step vitl_infer_847            60 --mode infer --classes 847 $VITL $ITERS $GRAPHS
  # inductor's GEMM templates (max-autotune), which can fuse the bias, GELU and residual adds
  # into the GEMMs (the MLPs' 4x-wide hidden layer is most of the compiled aggregator's
  # traffic; docs/benchmarks.md, "Counted work"): does the longer compilation pay?
  STEP_ENV="TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1" \
    step vitb_infer_150_max_autotune 120 --mode infer --classes 150 $VITB $ITERS $GRAPHS
fi
step vitb_infer_150_profile 30 --mode infer --classes 150 $VITB $PRECISION --no-cuda-graphs --iters 1 --warmup 2 \
    --profile 40 --profile-out "$OUT/profile_infer.txt"
step vitb_train_profile   40 --mode train --batch $TRAIN_BATCH --classes 171 $VITB $PRECISION --iters 1 --warmup 2 \
    --profile 40 --profile-out "$OUT/profile_train.txt"
if [ "$SMOKE" != 1 ]; then
  step vitb_train_b4_checkpoint  40 --mode train --batch 4 --classes 171 $VITB $ITERS --checkpoint-activations
  step vitb_infer_150_exact      30 --mode infer --classes 150 $VITB $ITERS --exact
fi
step vitb_count_infer_150 40 --mode infer --classes 150 $VITB --precision fp32 --class-chunk-size 0 --count --warmup 1
[ "$DRY_RUN" = 1 ] && exit 0

"$PYTHON" - "$OUT" <<'PY' || echo "summary failed"
import json, sys
out = sys.argv[1]
records = [json.loads(line) for line in open(f"{out}/results.jsonl") if line.strip().startswith("{")]
lines = []
measured = [r for r in records if r.get("kind") in ("time", "count")]
if measured:
    r = measured[0]
    lines += [f"Device: {r['device_name']} ({r['device']}), torch {r['torch']}, commit {r['git_commit']}, "
              f"{r['date']}; CPU {r['cpu_instruction_sets']}", ""]
lines += ["| step | mode | classes | batch | precision | compile | median s | per image s | images/s "
          "| first call s | peak GiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
for r in records:
    if r.get("kind") == "time":
        lines.append(f"| {r['tag']} | {r['mode']} | {r['classes']} | {r['batch']} | {r['precision_resolved']} "
                     f"| {r['compile']} | {r['median_s']} | {r['per_image_s']} | {r['images_per_s']} "
                     f"| {r['first_call_s']} | {r['peak_memory_gib']} |")
for r in records:
    if r.get("kind") == "eval":
        t = r["throughput"] or {}
        lines += ["", f"Evaluation, {r['tag']} ({r['dataset']}, {r['device']}): mIoU {r['mIoU']:.2f}, "
                  f"{r['num_images']} images, throughput {t.get('images_per_s', '-')} images/s "
                  f"({t.get('images', '-')} images in {t.get('seconds', '-')} s, without the first batch)"]
for r in records:
    if r.get("kind") == "count":
        t = r["totals"]
        lines += ["", f"Counted work, {r['tag']}: {t['flops'] / 1e12:.3f} TFLOP, {t['bytes'] / 1e9:.2f} GB moved, "
                  f"{t['ops']} ops", "", "| group | GFLOP | GB | ops |", "|---|---|---|---|"]
        for name, g in r["groups"].items():
            lines.append(f"| {name} | {g['flops'] / 1e9:.1f} | {g['bytes'] / 1e9:.2f} | {g['ops']} |")
        m = r.get("memory") or {}
        if m:
            lines += ["", f"Estimated peak of the live tensors, {r['tag']}: {m['peak_bytes'] / 2 ** 30:.2f} GiB "
                      f"(after {m['peak_at'].get('op')}, {m['peak_at'].get('phase')} {m['peak_at'].get('group')})"]
open(f"{out}/summary.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "total $(( $(date +%s) - start )) s; files in $OUT"
