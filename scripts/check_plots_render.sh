#!/usr/bin/env bash
# Draw `dvc plots show` offline in a real headless Chromium and check every plot rendered.
#   bash scripts/check_plots_render.sh [OUT_DIR]      (default: dvc_plots_check/)
# Installs puppeteer-core and @sparticuz/chromium (a headless Chromium build, from the npm registry)
# into .node/ (git-ignored) on first use; needs node and npm.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dvc_plots_check}"
if [ ! -d .node/node_modules/puppeteer-core ] || [ ! -d .node/node_modules/@sparticuz/chromium ]; then
  npm install --silent --no-audit --no-fund --prefix .node puppeteer-core@24.43.1 @sparticuz/chromium@147.0.0
fi
dvc plots show -o "$out"
cp scripts/check_plots_render.mjs .node/  # run from .node/ so its imports resolve there
node .node/check_plots_render.mjs "$out/index.html" "$out/screenshot.png"
