#!/usr/bin/env bash
# Assemble gpu_payload/ (git-ignored) for devtools/gpu_check/gpu_check.sh: by default the FER2013 jpegpack,
# its unpacker and the CK+48 crops (MODE=recipes ends with a CK+ transfer), copied from
# ../shared (override with FER_SHARED=DIR); PAYLOAD_DATA=fer2013 leaves CK+48 out;
# PAYLOAD_DATA=ck+ takes CK+48 alone (MODE=ablate on CK+: the shipped model then travels too);
# with wild-dev in ../shared, gpu_payload/wild_inputs.npz (devtools/gpu_check/make_wild_inputs.py,
# run by $PYTHON, python3 by default) for the recipe search's wild-dev scores. The device
# tool carries it with `carry: ["gpu_payload"]`; everything that travels (this payload plus
# the repo's tracked and untracked-not-ignored files) must stay within 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=${FER_SHARED:-../shared}
LIMIT_MIB=64

DATA=${PAYLOAD_DATA:-both}  # both (MODE=recipes) | fer2013 (MODE=engine) | ck+ (MODE=ablate on CK+)
case $DATA in fer2013|ck+|both) ;; *) echo "make_gpu_payload: PAYLOAD_DATA=$DATA is not fer2013, ck+ or both" >&2; exit 1 ;; esac

rm -rf gpu_payload
mkdir -p gpu_payload
if [ "$DATA" != ck+ ]; then
  for p in "$SHARED/datasets/fer2013.jpegpack" "$SHARED/tools/jpegpack.py"; do
    [ -e "$p" ] || { echo "make_gpu_payload: $p not found (set FER_SHARED)" >&2; exit 1; }
  done
  if [ -f "$SHARED/datasets/fer2013.jpegpack.sha256" ]; then
    (cd "$SHARED/datasets" && sha256sum --quiet -c fer2013.jpegpack.sha256) \
      || { echo "make_gpu_payload: fer2013.jpegpack fails its sha256 check" >&2; exit 1; }
  fi
  cp "$SHARED/datasets/fer2013.jpegpack" "$SHARED/tools/jpegpack.py" gpu_payload/
fi
if [ "$DATA" != fer2013 ]; then
  [ -d "$SHARED/datasets/CK+48" ] || { echo "make_gpu_payload: $SHARED/datasets/CK+48 not found" >&2; exit 1; }
  if [ -f "$SHARED/datasets/CK+48.sha256" ]; then
    (cd "$SHARED/datasets" && sha256sum --quiet -c CK+48.sha256) \
      || { echo "make_gpu_payload: CK+48 fails its sha256 check" >&2; exit 1; }
  fi
  cp -r "$SHARED/datasets/CK+48" gpu_payload/
fi
# wild-dev (evaluation only, never trained on) travels as the 48x48 inputs fercli's default
# predict path makes of it: its 14 MB of images do not fit beside FER2013, the inputs (~2 MB) do.
WILD=$SHARED/datasets/wild-dev
if [ "$DATA" != ck+ ] && [ -f "$WILD/labels.csv" ]; then
  if [ -f "$SHARED/datasets/wild-dev.sha256" ]; then
    (cd "$WILD" && sha256sum --quiet -c ../wild-dev.sha256) \
      || { echo "make_gpu_payload: wild-dev fails its sha256 check" >&2; exit 1; }
  fi
  PY=${PYTHON:-python3}
  PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} "$PY" devtools/gpu_check/make_wild_inputs.py --wild "$WILD" \
    --out gpu_payload/wild_inputs.npz
elif [ "$DATA" != ck+ ]; then
  echo "make_gpu_payload: no $WILD: the call reports no wild-dev numbers" >&2
fi
chmod -R u+w gpu_payload  # the shared copies are read-only; let the next run replace them

payload=$(du -sb gpu_payload | cut -f1)
tree=$( (git ls-files -co --exclude-standard -z | xargs -0 -r du -cb 2>/dev/null || true) | tail -1 | cut -f1)  # files moved aside are listed but absent
total=$((payload + tree))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
echo "gpu_payload: $(mib "$payload") MiB; repo working tree: $(mib "$tree") MiB; travels: $(mib "$total") MiB of $LIMIT_MIB"
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "make_gpu_payload: over the device call's $LIMIT_MIB MiB limit: ignore large untracked files" >&2
  if ls fercli/assets/default_model.* >/dev/null 2>&1; then
    echo "make_gpu_payload: the shipped default model (fercli/assets/default_model.*, ~46 MB) need not travel:" >&2
    echo "  mv fercli/assets/default_model.* /tmp/  before the device call, and  git checkout fercli/assets  after it" >&2
  fi
  exit 1
fi
