#!/usr/bin/env bash
# One GPU check of fercli in at most 9 minutes, offline, installing nothing.
#
#   1. unpack gpu_payload/fer2013.jpegpack, `fer prepare fer2013` (and ck+ from CK+48)
#   2. `fer bench --device cuda --json`: bcnn-resnet34 and resnet34 at 48 px and 96 px, batch 16
#   3. train bcnn-resnet34 (shared backbone, from scratch: no ImageNet weights offline) on
#      FER2013 within a wall-clock budget (epochs sized from a measured img/s), evaluate the
#      PublicTest-selected checkpoint on PrivateTest, export it (`fer export`, if present)
#   4. the launch-bound regime: batch 16 vs 128, eager vs torch.compile vs CUDA graphs
#   5. $OUT/gpu_check.json (every number + step status), $OUT/gpu_check.log, $OUT/model/*
#
# Run from the repo root with gpu_payload/ carried (bench/make_gpu_payload.sh builds it):
#   bash bench/gpu_check.sh
# Dry run on a CPU (tiny budgets; checks syntax and flow, numbers mean nothing):
#   GPU_CHECK_DRY=1 DEVICE=cpu PYTHON=.venv/bin/python PREPARED_DATA_DIR=data BUDGET_S=3000 \
#     OUT=/tmp/gc bash bench/gpu_check.sh
#
# Knobs (environment): OUT, DEVICE (cuda), BUDGET_S (whole script, 530), TRAIN_S (training
# wall clock, 170), TRAIN_BATCH (128), TRAIN_LR (1e-3), TRAIN_COMPILE (0), PAYLOAD
# (gpu_payload), PREPARED_DATA_DIR (a data root that already holds fer2013/: skip unpack +
# prepare), WORK (/tmp/fer_gpu_check), PYTHON (python3).
set -uo pipefail  # no -e: every step is guarded by `timeout` and reported, the script goes on
cd "$(dirname "$0")/.."

T_START=$(date +%s)
DRY=${GPU_CHECK_DRY:-0}
DEVICE=${DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-530}
T_END=$((T_START + BUDGET_S))
PY=${PYTHON:-python3}
PAYLOAD=${PAYLOAD:-gpu_payload}
WORK=${WORK:-/tmp/fer_gpu_check}
OUT=${OUT:-/tmp/fer_gpu_check_out}
TRAIN_S=${TRAIN_S:-170}
TRAIN_BATCH=${TRAIN_BATCH:-128}
TRAIN_LR=${TRAIN_LR:-1e-3}
TRAIN_COMPILE=${TRAIN_COMPILE:-0}
LIMIT_SCALE=1
if [ "$DRY" = 1 ]; then
  LIMIT_SCALE=${LIMIT_SCALE_DRY:-6}  # a CPU is far slower; the limits only guard against hangs
  BENCH_STEPS="--steps 2 --warmup 1 --batch-size 8 --inference-batch 8"
  BENCH_STEPS_SMALL="--steps 2 --warmup 1 --batch-size 8 --inference-batch 8"
  TRAIN_EXTRA="--train-subset 256 --epochs 1"
  TRAIN_BATCH=32
else
  BENCH_STEPS="--steps 50 --warmup 10"
  BENCH_STEPS_SMALL="--steps 30 --warmup 8"
  TRAIN_EXTRA=""
fi

rm -rf "$WORK"
mkdir -p "$WORK" "$OUT"
LOG=$OUT/gpu_check.log
STEPS=$WORK/steps.tsv
: > "$LOG"
: > "$STEPS"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 FER_OFFLINE=1
export FER_DATA_DIR=${PREPARED_DATA_DIR:-$WORK/data}
export TORCHINDUCTOR_CACHE_DIR=$WORK/inductor

log() { echo "[$(($(date +%s) - T_START))s] $*" | tee -a "$LOG" >&2; }

# run_step NAME MAX_S CMD...: stdout -> $WORK/NAME.out (and the log), stderr -> the log.
# The limit is MAX_S (x LIMIT_SCALE) or what is left of the budget, whichever is less.
run_step() {
  local name=$1 max=$(($2 * LIMIT_SCALE))
  shift 2
  local left=$((T_END - $(date +%s)))
  local lim=$((max < left ? max : left))
  if [ "$lim" -lt 10 ]; then
    log "== $name: skipped (${left}s of the budget left)"
    printf '%s\tskipped\t0\n' "$name" >> "$STEPS"
    return 125
  fi
  log "== $name (limit ${lim}s): $*"
  local t0 rc
  t0=$(date +%s.%N)
  timeout -k 5 "$lim" "$@" > "$WORK/$name.out" 2>> "$LOG"
  rc=$?
  local dt
  dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  printf '%s\t%s\t%s\n' "$name" "$rc" "$dt" >> "$STEPS"
  cat "$WORK/$name.out" >> "$LOG"
  [ "$rc" = 124 ] && log "   $name: TIMED OUT after ${lim}s" || log "   $name: exit $rc in ${dt}s"
  return "$rc"
}
FER=("$PY" -m fercli)  # an array, not a function: `timeout` runs it

log "gpu_check: device=$DEVICE dry=$DRY budget=${BUDGET_S}s out=$OUT"
{
  echo "date: $(date -u +%FT%TZ)"
  "$PY" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  echo "cpus: $(nproc)"
} >> "$LOG" 2>&1

# ---------------------------------------------------------------- 1. data
if [ -f "$FER_DATA_DIR/fer2013/manifest.json" ]; then
  log "== prepared FER2013 found in $FER_DATA_DIR: skipping unpack + prepare"
else
  run_step unpack 90 "$PY" "$PAYLOAD/jpegpack.py" unpack "$PAYLOAD/fer2013.jpegpack" "$WORK/fer2013_jpg"
  SRC=$WORK/fer2013_jpg
  [ -d "$SRC/fer2013/train" ] && SRC=$SRC/fer2013
  run_step prepare_fer2013 150 "${FER[@]}" prepare fer2013 "$SRC" --json
fi
if [ -z "${PREPARED_DATA_DIR:-}" ] && [ -d "$PAYLOAD/CK+48" ]; then  # never write into a given data dir
  run_step prepare_ckplus 40 "${FER[@]}" prepare ck+ "$PAYLOAD/CK+48" --json
fi

# ---------------------------------------------------------------- 2. bench
# The training configuration first (engine only): its img/s sizes the epochs of step 3.
run_step bench_train_config 60 "${FER[@]}" bench --device "$DEVICE" --json --model bcnn-resnet34 --shared-backbone \
  --batch-size "$TRAIN_BATCH" --no-reference --no-inference $BENCH_STEPS_SMALL
for spec in bcnn-resnet34:48 resnet34:48 bcnn-resnet34:96 resnet34:96; do
  model=${spec%:*} size=${spec#*:}
  run_step "bench_${model%%-*}_${size}" 75 "${FER[@]}" bench --device "$DEVICE" --json --model "$model" \
    --image-size "$size" --batch-size 64 $BENCH_STEPS
done
# The paper's batch 16: launch-bound on a GPU.
run_step bench_bcnn_48_b16 60 "${FER[@]}" bench --device "$DEVICE" --json --model bcnn-resnet34 --image-size 48 \
  --batch-size 16 --no-inference $BENCH_STEPS

# ---------------------------------------------------------------- 4a. launch-bound: compile, CUDA graphs
if [ "$DRY" = 1 ]; then
  ABL16="--steps 1 --warmup 1 --rounds 1 --variants engine"
  ABL128=$ABL16
else
  ABL16="--steps 50 --warmup 5 --rounds 1 --variants engine,reduce-overhead,compile"
  ABL128="--steps 30 --warmup 5 --rounds 1 --variants engine,compile,reduce-overhead"
fi
run_step compile_b16 110 "$PY" bench/ablation_engine.py --device "$DEVICE" --batch-size 16 $ABL16 \
  --json "$WORK/compile_b16.json"

# ---------------------------------------------------------------- 3. train, evaluate, export
# Epochs: what fits min(TRAIN_S, the budget left minus 70 s for evaluate/export/summary).
LEFT=$((T_END - $(date +%s) - 70))
TRAIN_EFF=$((TRAIN_S < LEFT ? TRAIN_S : LEFT))
EPOCHS=$("$PY" - "$WORK/bench_train_config.out" "$TRAIN_EFF" "$DRY" <<'EOF'
import json, sys
path, budget, dry = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
try:
    ips = json.load(open(path))["engine_img_per_s"]
except Exception:
    ips = None
if dry:
    print(1)
elif not ips:
    print(8)  # no measurement: a guess; the timeout still bounds the run
else:
    # per epoch: 28709 training images + PublicTest evaluation (~1/4 the cost per image)
    # + two checkpoint writes (~2 s); the run itself ~20 s to start (imports, data, model)
    per_epoch = 28709 / ips + 3589 / (4 * ips) + 2.0
    print(max(1, min(100, int((budget - 20) / per_epoch))))
EOF
)
log "== training for $EPOCHS epochs (budget ${TRAIN_EFF}s of TRAIN_S=${TRAIN_S}s)"
RUN=$WORK/runs/bcnn-fer2013
COMPILE_FLAG=""
[ "$TRAIN_COMPILE" = 1 ] && COMPILE_FLAG="--compile"
[ "$TRAIN_EFF" -lt 30 ] && TRAIN_EFF=-100  # under 30 s: run_step skips it rather than start a doomed run
run_step train $((TRAIN_EFF + 40)) "${FER[@]}" train --dataset fer2013 --model bcnn-resnet34 --shared-backbone \
  --no-pretrained --optimizer adamw-gc --lr "$TRAIN_LR" --weight-decay 1e-2 --schedule cosine \
  --batch-size "$TRAIN_BATCH" --epochs "$EPOCHS" --device "$DEVICE" $COMPILE_FLAG $TRAIN_EXTRA \
  --out "$RUN" --json
if [ -f "$RUN/best.pt" ]; then
  run_step evaluate 45 "${FER[@]}" evaluate "$RUN" --device "$DEVICE" --json
  mkdir -p "$WORK/export"
  run_step export 30 "${FER[@]}" export "$RUN" --out "$WORK/export/default_model.npz" --max-shard-mb 15 || true
fi

# ---------------------------------------------------------------- 4b. compile at batch 128, if time is left
run_step compile_b128 150 "$PY" bench/ablation_engine.py --device "$DEVICE" --batch-size 128 $ABL128 \
  --json "$WORK/compile_b128.json"

# ---------------------------------------------------------------- 5. summary
if [ -d "$WORK/export" ]; then
  n=$(find "$WORK/export" -type f | wc -l)
  big=$(find "$WORK/export" -type f -size +16M | wc -l)
  if [ "$n" -ge 1 ] && [ "$n" -le 5 ] && [ "$big" = 0 ]; then
    mkdir -p "$OUT/model"
    cp "$WORK/export"/* "$OUT/model/" 2>/dev/null
  elif [ "$n" -ge 1 ]; then
    log "export: $n files ($big over 16 MiB) do not fit what \$OUT can return; not copied"
  fi
fi
[ -f "$RUN/history.csv" ] && cp "$RUN/history.csv" "$OUT/history.csv"
"$PY" - "$WORK" "$OUT/gpu_check.json" "$T_START" "$EPOCHS" "$TRAIN_EFF" <<'EOF'
import csv, json, os, sys, time
work, out, t_start, epochs, train_s = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])

def load(name):
    p = os.path.join(work, name)
    try:
        with open(p) as f:
            return json.load(f)
    except Exception:
        return None

steps = []
for line in open(os.path.join(work, "steps.tsv")):
    name, rc, sec = line.rstrip("\n").split("\t")
    steps.append({"step": name, "exit": rc, "seconds": float(sec)})
bench_keys = ("engine_img_per_s", "reference_img_per_s", "speedup", "flops_per_image", "engine_tflops",
              "reference_tflops", "peak_matmul_tflops", "fraction_of_peak", "matmul_tflops",
              "inference_ms_per_face_batch1", "inference_batch", "inference_img_per_s_batched", "device",
              "data", "model", "shared_backbone", "batch_size", "image_size", "steps", "warmup",
              "torch_version", "date", "notes")
benches = {}
for name in ("bench_bcnn_48", "bench_resnet34_48", "bench_bcnn_96", "bench_resnet34_96",
             "bench_bcnn_48_b16", "bench_train_config"):
    r = load(name + ".out")
    if r:
        benches[name] = {k: r.get(k) for k in bench_keys}
train = load("train.out")
train = train[0] if isinstance(train, list) and train else None
ev = load("evaluate.out")
result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wall_seconds": round(time.time() - t_start, 1),
          "prepare": load("prepare_fer2013.out"),
          "steps": steps, "bench": benches,
          "compile": {"batch16": load("compile_b16.json"), "batch128": load("compile_b128.json")}}
if train:
    hist = train.get("history", [])
    best = train.get("best_epoch")
    to_best = sum(float(h.get("epoch_seconds", 0)) for h in hist if int(h["epoch"]) <= (best or 0))
    acc = ev.get("accuracy") if ev else None
    result["train"] = {
        "model": "bcnn-resnet34 (shared backbone), from scratch (no ImageNet weights offline)",
        "epochs": epochs, "train_budget_s": train_s, "seconds": train.get("seconds"),
        "img_per_s": train.get("images_per_second"), "best_epoch": best,
        "best_val_acc_public_test": train.get("best_val_acc"),
        "seconds_to_selected_epoch": round(to_best, 1),
        "private_test_accuracy_of_selected": acc,
        "private_test_macro_f1": ev.get("macro_f1") if ev else None,
        "paper_target_private_test": 0.7055,
        "reached_target": (acc is not None and acc >= 0.7055),
        "minutes_to_target": round(train.get("seconds", 0) / 60, 2) if acc is not None and acc >= 0.7055 else None,
        "note": "checkpoint selected on PublicTest only; PrivateTest is evaluated once, on the selected checkpoint",
        "history": hist,
    }
with open(out, "w") as f:
    json.dump(result, f, indent=2)

def fmt(v, spec):
    return "-" if v is None else format(v, spec)
print("\n==== gpu_check summary ====")
for s in steps:
    print(f"  {s['step']:<20} exit {s['exit']:>7}  {s['seconds']:7.1f} s")
for name, b in benches.items():
    print(f"  {name:<20} engine {fmt(b['engine_img_per_s'], ',.0f')} img/s  ref {fmt(b['reference_img_per_s'], ',.0f')}  "
          f"speedup {fmt(b['speedup'], '.2f')}x  {fmt(b['engine_tflops'], '.3g')} TFLOP/s = "
          f"{fmt(b['fraction_of_peak'] and 100 * b['fraction_of_peak'], '.1f')}% of {fmt(b['peak_matmul_tflops'], '.3g')}  "
          f"infer {fmt(b['inference_ms_per_face_batch1'], '.2f')} ms")
for k, c in result["compile"].items():
    if c:
        print(f"  compile {k}: " + ", ".join(f"{v} {x:,.0f}" for v, x in c["img_per_s_median"].items()) + " img/s")
if "train" in result:
    t = result["train"]
    print(f"  train: {t['epochs']} epochs in {fmt(t['seconds'], '.0f')} s, best epoch {t['best_epoch']} "
          f"PublicTest {fmt(t['best_val_acc_public_test'], '.4f')}, PrivateTest {fmt(t['private_test_accuracy_of_selected'], '.4f')}"
          f" (target 0.7055: {'reached' if t['reached_target'] else 'not reached'})")
print(f"  total {result['wall_seconds']} s; wrote {out}")
EOF
log "gpu_check done in $(($(date +%s) - T_START))s"
ls -la "$OUT" >&2
