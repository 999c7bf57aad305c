#!/usr/bin/env bash
# CI, second venv: `pip install .` alone (no extras) must predict, serve and run the README's
# API snippet without torch; `fer train` there must answer with the one-line extra message.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'kill "${serve_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check "$repo"
py="$work/venv/bin/python"
fer="$work/venv/bin/fer"
cd "$work"  # outside the checkout: the installed package is what runs
if "$py" -c "import torch" 2>/dev/null; then echo "ci: torch is installed in the inference-only venv" >&2; exit 1; fi
du -sh "$work/venv" | awk '{print "ci: inference-only venv " $1}'

"$fer" predict "$repo/sample_images" --json > predict.json
"$py" -c "import json; r = json.load(open('predict.json')); assert len(r) == 3 and all(x['faces'] for x in r), r"

# The README's Python API block, run as written (a 1-second clip stands in for clip.mp4).
cp -r "$repo/sample_images" .
"$py" - <<'PY'
import cv2, numpy as np
img = cv2.imread("sample_images/astronaut.jpg")
out = cv2.VideoWriter("clip.mp4", cv2.VideoWriter_fourcc(*"mp4v"), 10, (img.shape[1], img.shape[0]))
for _ in range(10):
    out.write(img)
out.release()
PY
"$py" - "$repo/README.md" <<'PY'
import re, sys
block = re.search(r"## Python API.*?```python\n(.*?)```", open(sys.argv[1]).read(), re.S).group(1)
exec(compile(block, "README.md", "exec"))
assert "torch" not in sys.modules, "the README's API snippet imported torch"
PY

port=$("$py" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$fer" serve --port "$port" > serve.log 2>&1 &
serve_pid=$!
for _ in $(seq 1 60); do
    if "$py" -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:$port/healthz', timeout=2).status != 200)" 2>/dev/null; then
        break
    fi
    sleep 1
done
"$py" -c "import urllib.request; print('ci: /healthz', urllib.request.urlopen('http://127.0.0.1:$port/healthz', timeout=5).read().decode()[:200])"
kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true

set +e
"$fer" train --dataset fer2013 > train.out 2> train.err
rc=$?
set -e
if [ "$rc" -ne 2 ] || [ "$(wc -l < train.err)" -ne 1 ] || ! grep -q "fercli\[train\]" train.err || grep -q Traceback train.err; then
    echo "ci: fer train without torch should print one line naming fercli[train] and exit 2 (rc=$rc):" >&2
    cat train.err >&2; exit 1
fi
echo "ci: inference-only venv OK ($(cat train.err))"
