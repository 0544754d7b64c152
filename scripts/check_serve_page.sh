#!/usr/bin/env bash
# Check the page of `python -m stages.serve` in a real headless Chromium: a film uploaded, the answer,
# the overlay and the flags visible (OUT_DIR/answer.png), a non-image refused with a message
# (OUT_DIR/refusal.png). Needs a trained model (`dvc repro`), node and npm.
#   bash scripts/check_serve_page.sh [FILM] [OUT_DIR]     (defaults: a demo test film, serve_check/)
# Installs puppeteer-core and @sparticuz/chromium into .node/ (git-ignored) on first use, as
# scripts/check_plots_render.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
film="${1:-$(find data/raw/test -name '*.png' | sort | head -1)}"
out="${2:-serve_check}"
mkdir -p "$out"
if [ ! -d .node/node_modules/puppeteer-core ] || [ ! -d .node/node_modules/@sparticuz/chromium ]; then
  npm install --silent --no-audit --no-fund --prefix .node puppeteer-core@24.43.1 @sparticuz/chromium@147.0.0
fi
port=8765
python -m stages.serve --port "$port" > "$out/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/" > /dev/null && break; sleep 1; done
cp scripts/check_serve_page.mjs .node/  # run from .node/ so its imports resolve there
node .node/check_serve_page.mjs "http://127.0.0.1:$port/" "$(realpath "$film")" "$(realpath README.md)" "$(realpath "$out")"
