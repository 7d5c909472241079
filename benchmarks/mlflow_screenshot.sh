#!/usr/bin/env bash
# Screenshot of MLflow's runs view for a small alignx sweep (the README's "Comparing a sweep" image).
#
# Needs headless Chromium (Debian: `apt-get install chromium`) and alignx installed (`make install`).
#   bash benchmarks/mlflow_screenshot.sh            # writes docs/img/mlflow_runs.png
#   WORK=/tmp/shot PORT=5055 bash benchmarks/mlflow_screenshot.sh
# Steps: (1) a 4-job sweep objective=dpo,kto x adapter=none,lora on a shrunken tiny model into a fresh
# store; (2) `mlflow ui` on that store; (3) Chromium loads the URL the sweep printed for its jobs
# (the training-runs view, ?workflowType=machine_learning) and saves a 1600x1000 screenshot.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/alignx-mlflow-shot}
PORT=${PORT:-5055}
OUT=${OUT:-docs/img/mlflow_runs.png}
BIN=${BIN:-.venv/bin}
CHROMIUM=${CHROMIUM:-chromium}
rm -rf "$WORK" && mkdir -p "$WORK"
OMP_NUM_THREADS=1 "$BIN/alignx" -m objective=dpo,kto adapter=none,lora model=tiny \
  model.hidden_size=64 model.intermediate_size=128 model.num_hidden_layers=2 \
  trainer.max_steps=8 trainer.enable_progress_bar=false dataset.n_train=128 eval.num_prompts=16 eval.max_new_tokens=12 \
  save.model=false "outputs_root=$WORK/outputs" "hydra.sweep.dir=$WORK/sweep" > "$WORK/sweep.log" 2>&1
URL=$(grep -o "http://127.0.0.1:5000/#/experiments/[^ ]*workflowType=machine_learning[^ ]*" "$WORK/sweep.log" | tail -1)
URL=${URL/127.0.0.1:5000/127.0.0.1:$PORT}
"$BIN/mlflow" ui --backend-store-uri "sqlite:///$WORK/outputs/mlflow.db" --host 127.0.0.1 --port "$PORT" > "$WORK/ui.log" 2>&1 &
UI=$!
trap 'kill $UI 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break; sleep 1; done
"$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1600,1000 \
  --virtual-time-budget=20000 --screenshot="$OUT" "$URL" 2> "$WORK/chromium.log"
echo "$URL"
echo "wrote $OUT"
