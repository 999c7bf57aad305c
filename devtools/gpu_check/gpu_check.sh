#!/usr/bin/env bash
# ONE offline device call (≤ 9 min, installs nothing). Every step runs under `timeout` within
# BUDGET_S and is reported; the script goes on after a failed step.
#
#   1. data: unpack gpu_payload/fer2013.jpegpack and `fer prepare fer2013` on the image folders
#      (no Haar cascade is loaded for FER2013 folders: OpenCV 5 on the device has none);
#      `fer prepare ck+` when gpu_payload/CK+48 travelled.
#   2. by MODE:
#      MODE=recipes (the default): devtools/gpu_check/recipe_search.py over $RECIPES
#        (devtools/gpu_check/recipes_fer2013.json): a throughput probe at each image size, each
#        recipe (on top of `--preset fer2013-scratch`) for an equal share of the budget, the
#        recipe chosen on PublicTest only, PrivateTest read once for the chosen run (single
#        model, then flip TTA), which is exported; with CK+48 in the payload it ends with the
#        file's CK+ transfer from the chosen run (all 10 subject folds, mean ± std, pooled).
#      MODE=ablate: `fer ablate` (Table 5) with --jobs $JOBS on ABLATE_DATASETS ("ck+" by
#        default, or "fer2013", or both; ABLATE_CK_EPOCHS 16, the CK+ ladder's in docs/results.md,
#        ABLATE_CK_FOLDS the folds still to run, e.g. 3-9 (all when unset), ABLATE_FER_EPOCHS 12,
#        ABLATE_SEEDS 0,1,2); $OUT gets ablation-<dataset>.json and ablate-<dataset>-records.tgz
#        (every run's records without checkpoints: `fer ablate --progress` reads them beside
#        the folds run elsewhere).
#      MODE=engine: the engine's throughput rows graphed AND eager (devtools/gpu_check/gpu_rows.py),
#        concurrent runs (`fer train --seeds 0..N-1 --jobs N`), graphed vs eager loss curves,
#        then one accuracy run of `--preset fer2013-scratch` (RECIPE_ARGS adds options) for the
#        epochs the budget left allows, `fer evaluate` (PrivateTest once), `fer export`.
#   3. $OUT: gpu_check.json (every number; devtools/gpu_check/gpu_summary.py), gpu_check.log,
#      model/* (the `fer export --max-shard-mb 15` output, ≤ 6 files of ≤ 15 MiB): ≤ 8 files.
#
# On the device (repo root, gpu_payload/ carried; devtools/gpu_check/make_gpu_payload.sh builds it):
#   PYTHON=python3 bash devtools/gpu_check/gpu_check.sh
# Dry run on a CPU (tiny sizes, a synthetic FER2013-shaped dataset for the training steps;
# checks the flow end to end, numbers mean nothing):
#   GPU_CHECK_DRY=1 DEVICE=cpu PYTHON=.venv/bin/python OUT=/tmp/gc bash devtools/gpu_check/gpu_check.sh
#
# Knobs (environment): MODE (recipes), RECIPES, OUT, DEVICE (cuda), BUDGET_S (whole script, 530),
# JOBS (8), MODE=engine step caps ROWS_S (200), CONC_S (100), CURVE_S (60, each of the two),
# RECIPE_ARGS (extra `fer train` options for MODE=engine's accuracy run), PAYLOAD (gpu_payload),
# WORK, PYTHON (python3), PREPARED_DATA_DIR (a data root that already holds fer2013/: no prepare).
set -uo pipefail  # no -e: every step is guarded by `timeout` and reported, the script goes on
cd "$(dirname "$0")/../.."

T_START=$(date +%s)
DRY=${GPU_CHECK_DRY:-0}
DEVICE=${DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-530}
T_END=$((T_START + BUDGET_S))
PY=${PYTHON:-python3}
PAYLOAD=${PAYLOAD:-gpu_payload}
WORK=${WORK:-/tmp/fer_gpu_check}
OUT=${OUT:-/tmp/fer_gpu_check_out}
JOBS=${JOBS:-8}
RECIPE_ARGS=${RECIPE_ARGS:-}
MODE=${MODE:-recipes}  # recipes (FER2013 recipe search + CK+ transfer) | ablate (Table 5) | engine (throughput rows + one accuracy run)
RECIPES=${RECIPES:-devtools/gpu_check/recipes_fer2013.json}
LIMIT_SCALE=1
if [ "$DRY" = 1 ]; then
  LIMIT_SCALE=${LIMIT_SCALE_DRY:-8}  # a CPU is far slower; limits only guard against hangs
  BUDGET_S=${BUDGET_S_DRY:-3600}; T_END=$((T_START + BUDGET_S))
  ROWS_ARGS="--dry"
  JOBS=2
  CONC="--train-subset 16 --epochs 1 --batch-size 8"
  CURVE="--train-subset 32 --epochs 2 --batch-size 8"
  TRAIN_EXTRA="--train-subset 32 --batch-size 8"
else
  ROWS_ARGS=""
  CONC="--train-subset 4096 --epochs 2 --batch-size 16"
  CURVE="--train-subset 8192 --epochs 4 --batch-size 128"
  TRAIN_EXTRA=""
fi

rm -rf "$WORK"
mkdir -p "$WORK" "$OUT"
rm -rf "${OUT:?}"/*  # what comes back is exactly what this run wrote
LOG=$OUT/gpu_check.log
STEPS=$WORK/steps.tsv
: > "$LOG"
: > "$STEPS"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 FER_OFFLINE=1
export FER_DATA_DIR=${PREPARED_DATA_DIR:-$WORK/data}

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
  echo "code: $("$PY" -c 'from fercli.provenance import code_version; print(code_version())' 2>/dev/null || echo unknown)  (not git rev-parse: the device copy sits in another repository)"
  "$PY" -c 'import torch, sys, cv2; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "opencv", cv2.__version__, "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "cpu", torch.backends.cpu.get_cpu_capability())'
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  echo "cpus: $(nproc)  load: $(cut -d' ' -f1-3 /proc/loadavg)"
} >> "$LOG" 2>&1

# ---------------------------------------------------------------- 1. data
if [ -f "$FER_DATA_DIR/fer2013/manifest.json" ]; then
  log "== prepared FER2013 found in $FER_DATA_DIR: skipping unpack + prepare"
elif [ -f "$PAYLOAD/fer2013.jpegpack" ]; then
  run_step unpack 90 "$PY" "$PAYLOAD/jpegpack.py" unpack "$PAYLOAD/fer2013.jpegpack" "$WORK/fer2013_jpg"
  SRC=$WORK/fer2013_jpg
  [ -d "$SRC/fer2013/train" ] && SRC=$SRC/fer2013
  run_step prepare_fer2013 150 "${FER[@]}" prepare fer2013 "$SRC" --json
else
  log "== no $PAYLOAD/fer2013.jpegpack: FER2013 steps will have no data"
fi
if [ "$DRY" = 1 ]; then
  # Training steps on a CPU: a tiny FER2013-shaped dataset (the real one just proved prepare).
  export FER_DATA_DIR=$WORK/dry_data
  "$PY" - "$FER_DATA_DIR/fer2013" <<'EOF'
import sys
import numpy as np
from fercli.data.prepared import FER2013_CLASSES, write_prepared
rng = np.random.default_rng(0)
n = (48, 16, 16)
split = np.array(["train"] * n[0] + ["public_test"] * n[1] + ["private_test"] * n[2])
write_prepared(sys.argv[1], name="fer2013", classes=FER2013_CLASSES,
               images=rng.integers(0, 256, (sum(n), 48, 48), dtype=np.uint8), labels=rng.integers(0, 7, sum(n)),
               split=split, source=np.array([f"dry:{i}" for i in range(sum(n))]))
EOF
fi
if [ -d "$PAYLOAD/CK+48" ]; then  # CK+48 crops: no face detection, so no Haar cascade needed
  run_step prepare_ck 60 "${FER[@]}" prepare ck+ "$PAYLOAD/CK+48" --json
fi

if [ "$MODE" = ablate ]; then
  # ------------------------------------------------------------ Table 5 on the GPU
  # The from-scratch ladder (ResNet34 → +BCN → +GC) beside the paper's numbers, mean ± std:
  # CK+ on every subject-independent fold plus the FER2013-pretrained rung (the shipped model,
  # which travels in fercli/assets: make the payload with PAYLOAD_DATA=ck+); FER2013 over
  # ABLATE_SEEDS. Runs go $JOBS at a time (own processes, one GPU).
  for ds in ${ABLATE_DATASETS:-ck+}; do
    case $ds in
      ck+) A_ARGS="--epochs ${ABLATE_CK_EPOCHS:-16}${ABLATE_CK_FOLDS:+ --folds $ABLATE_CK_FOLDS}" ;;
      *) A_ARGS="--epochs ${ABLATE_FER_EPOCHS:-12} --seeds ${ABLATE_SEEDS:-0,1,2}" ;;
    esac
    if [ "$DRY" = 1 ]; then
      A_ARGS="--epochs 1 --train-subset 16 --batch-size 8"
      [ "$ds" = ck+ ] && A_ARGS="$A_ARGS --folds ${ABLATE_CK_FOLDS:-0}"
    fi
    tag=${ds//+/}
    LEFT=$((T_END - $(date +%s) - 25))
    run_step "ablate_$tag" $((LEFT > 30 ? LEFT : 0)) "${FER[@]}" ablate --dataset "$ds" $A_ARGS --jobs "$JOBS" \
      --device "$DEVICE" --out "$WORK/ablate-$tag" --json --quiet
    [ -f "$WORK/ablate-$tag/ablation.json" ] && cp "$WORK/ablate-$tag/ablation.json" "$OUT/ablation-$tag.json"
    # the run directories less their checkpoints (config, history, summary, metrics per run)
    [ -d "$WORK/ablate-$tag" ] && tar czf "$OUT/ablate-$tag-records.tgz" --exclude='*.pt' -C "$WORK" "ablate-$tag"
  done
  EPOCHS=0
elif [ "$MODE" = recipes ]; then
  # ------------------------------------------------------------ the recipe search
  # devtools/gpu_check/recipe_search.py: a throughput probe, then each recipe of
  # $RECIPES for an equal share of the budget left, chosen on PublicTest; only the chosen
  # run is evaluated on PrivateTest and exported.
  RS_ARGS=""
  [ "$DRY" = 1 ] && RS_ARGS="--dry"
  # wild-dev beside PublicTest for every recipe: the inputs make_gpu_payload.sh made of it
  [ -f "$PAYLOAD/wild_inputs.npz" ] && RS_ARGS="$RS_ARGS --wild-inputs $PAYLOAD/wild_inputs.npz"
  LEFT=$((T_END - $(date +%s) - 25))  # 25 s: the summary and copying back
  run_step recipes $((LEFT > 30 ? LEFT : 0)) "$PY" devtools/gpu_check/recipe_search.py --recipes "$RECIPES" \
    --budget-s $((LEFT - 20)) --device "$DEVICE" --work "$WORK/recipes" --json "$WORK/recipes.json" \
    --export "$WORK/export" $RS_ARGS
  EPOCHS=0
else
# ---------------------------------------------------------------- MODE=engine: throughput rows (graphed + eager)
run_step rows "${ROWS_S:-200}" "$PY" devtools/gpu_check/gpu_rows.py --device "$DEVICE" --json "$WORK/rows.json" $ROWS_ARGS

# ---------------------------------------------------------------- MODE=engine: concurrent runs, paper bcnn b16
SEEDS=$(seq -s, 0 $((JOBS - 1)))
run_step concurrent "${CONC_S:-100}" "${FER[@]}" train --dataset fer2013 --arch bcnn-resnet34 --no-pretrained \
  --optimizer adamw-gc --lr 1e-4 $CONC --seeds "$SEEDS" --jobs "$JOBS" --device "$DEVICE" \
  --checkpoint-every 1000s --out "$WORK/runs/concurrent" --json

# ---------------------------------------------------------------- MODE=engine: loss curves, graphed vs eager
for mode in cuda-graphs no-cuda-graphs; do
  run_step "curve_$mode" "${CURVE_S:-60}" "${FER[@]}" train --dataset fer2013 --arch bcnn-resnet34 --shared-backbone \
    --no-pretrained --optimizer adamw-gc --lr 1e-3 --weight-decay 1e-2 $CURVE --seed 0 --device "$DEVICE" \
    "--$mode" --checkpoint-every 1000s --out "$WORK/runs/curve-$mode" --json
done

# ---------------------------------------------------------------- MODE=engine: the accuracy run
# Epochs: what fits the budget left minus 75 s (evaluate, export, summary), at the graphed
# shared-trunk b128 rate measured by the rows step (the preset's configuration).
LEFT=$((T_END - $(date +%s) - 75))
EPOCHS=$("$PY" - "$WORK/rows.json" "$LEFT" "$DRY" <<'EOF'
import json, sys
path, budget, dry = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
try:
    ips = json.load(open(path))["rows"]["shared_b128"]["engine_img_per_s"]
except Exception:
    ips = None
if dry:
    print(2)
elif not ips:
    print(64)  # no measurement: the preset's 64 epochs; the timeout still bounds the run
else:
    # per epoch: 28709 training images + PublicTest (3589, forward only ≈ 1/3 the cost)
    # + ~1 s (eval sync, history; last.pt only every 60 s); ~25 s start + graph capture
    per_epoch = 28709 / ips + 3589 / (3 * ips) + 1.0
    print(max(1, min(200, int((budget - 25) / per_epoch))))
EOF
)
# If the rows step measured no graphed step, train eagerly rather than lose the model.
if [ "$DRY" != 1 ] && ! "$PY" -c 'import json,sys; r=json.load(open(sys.argv[1]))["rows"]["shared_b128"]; sys.exit(0 if r.get("engine_img_per_s") else 1)' "$WORK/rows.json" 2>/dev/null; then
  log "== the graphed shared-trunk row has no number: the accuracy run goes eager (--no-cuda-graphs)"
  RECIPE_ARGS="${RECIPE_ARGS:-} --no-cuda-graphs"
fi
log "== accuracy run: $EPOCHS epochs in ${LEFT}s"
RUN=$WORK/runs/accuracy
run_step train $((LEFT > 30 ? LEFT : 0)) "${FER[@]}" train --dataset fer2013 --preset fer2013-scratch \
  --epochs "$EPOCHS" --device "$DEVICE" $TRAIN_EXTRA $RECIPE_ARGS --out "$RUN" --json
if [ -f "$RUN/best.pt" ]; then
  run_step evaluate 40 "${FER[@]}" evaluate "$RUN" --device "$DEVICE" --json
  mkdir -p "$WORK/export"
  run_step export 30 "${FER[@]}" export "$RUN" --out "$WORK/export/model.npz" --max-shard-mb 15 || true
fi
fi  # MODE

# ---------------------------------------------------------------- 3. what comes back (≤ 8 files)
if [ -d "$WORK/export" ]; then
  n=$(find "$WORK/export" -type f | wc -l)
  big=$(find "$WORK/export" -type f -size +15M | wc -l)
  if [ "$n" -ge 1 ] && [ "$n" -le 6 ] && [ "$big" = 0 ]; then
    mkdir -p "$OUT/model"
    cp "$WORK/export"/* "$OUT/model/"
  elif [ "$n" -ge 1 ]; then
    log "export: $n files ($big over 15 MiB) do not fit what \$OUT can return; not copied"
  fi
fi
"$PY" devtools/gpu_check/gpu_summary.py "$WORK" "$OUT/gpu_check.json" "$T_START" "$EPOCHS" | tee -a "$LOG"
log "gpu_check done in $(($(date +%s) - T_START))s"
find "$OUT" -type f | sort >&2
