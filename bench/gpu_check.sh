#!/usr/bin/env bash
# The GPU check, for one prepared non-interactive run on a single-GPU machine (H100/H200, Python 3.12, torch with
# CUDA, no network). First contact: nothing here has run on a GPU before, so every phase runs under its own
# `timeout`, a failing phase does not stop the next, and a summary table at the end says what ran, passed, failed
# or was skipped. Whole script < 9 minutes (it skips phases that no longer fit in BUDGET_S; typical phases finish
# far inside their timeouts: build 2-4 min, tests and smoke well under a minute, a training-step phase ~30-60 s).
#
# Phases: environment + copy bandwidth (a large clone()) | build relground._C (FORCE_CUDA, one arch) | CUDA tests of
# the ops | CUDA smoke tests (one bf16 training step of the full model, the evaluator) | op benchmarks | training-step
# benchmarks at the paper's shapes (ResNet-101, 40 pairs of 600x1000, M = 50): faithful fp32 (the authors' setting),
# faithful bf16, fast bf16, and the fastest configuration (fast bf16, 5 captions per image, folded BN,
# channels_last, torch.compile, JPEGs decoded by nvJPEG and resized on the GPU: data.loader=torchvision); then the
# CUDA-graph step (train.cuda_graph: tests against eager steps, and fast bf16 with the step replayed from graphs).
#
# Optional wheels for packages missing there travel in .whl/ (git-ignored); without them the tests that need them
# skip (hypothesis: only the property tests) and an old setuptools (< 77, PEP 639 license) is reported:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       -d .whl hypothesis==6.170.17 sortedcontainers==2.4.0 'setuptools>=77'
# Device tool: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=570)
# Without CUDA (or with DRY_RUN=1) it runs the same phases in CPU mode at tiny shapes (no build, CUDA tests skip):
#   DRY_RUN=1 PY=.venv/bin/python bash bench/gpu_check.sh
# Record the printed tables with card, date and command in bench/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/relground-gpu-check}
PY=${PY:-python3}
BUDGET_S=${BUDGET_S:-520}  # the device tool's timeout_s=570 leaves ~50 s for start-up and the summary
START=$(date +%s)
mkdir -p "$OUT"
log() { echo "== $(date -u +%H:%M:%S) $*"; }

NAMES=(); STATES=(); SECONDS_USED=(); NOTES=()
record() { NAMES+=("$1"); STATES+=("$2"); SECONDS_USED+=("$3"); NOTES+=("${4:-}"); }
left() { echo $((BUDGET_S - ($(date +%s) - START))); }

# phase NAME TIMEOUT_S COMMAND...: runs COMMAND under `timeout`, logs to $OUT/NAME.log, records the outcome.
# Exit 5 from pytest (nothing collected) and a log saying everything was skipped count as "skipped".
phase() {
  local name=$1 limit=$2; shift 2
  if (( $(left) < limit / 2 )); then
    log "$name: skipped (budget: $(left) s left)"; record "$name" skipped 0 "budget"; return 0
  fi
  (( limit > $(left) )) && limit=$(left)
  log "$name (timeout ${limit} s)"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$? t=$(( $(date +%s) - t0 ))
  tail -n "${TAIL:-25}" "$OUT/$name.log"
  local state=passed note=""
  if (( rc == 124 || rc == 137 )); then state=timeout; note="after ${limit} s"
  elif (( rc == 5 )); then state=skipped; note="nothing collected"
  elif (( rc != 0 )); then state=failed; note="exit $rc"
  elif grep -Eq '^[0-9]+ skipped' "$OUT/$name.log" && ! grep -Eq '[0-9]+ passed' "$OUT/$name.log"; then
    state=skipped; note=$(grep -Eo '[0-9]+ skipped' "$OUT/$name.log" | tail -1)
  elif grep -Eq '[0-9]+ passed' "$OUT/$name.log"; then note=$(grep -Eo '[0-9]+ passed(, [0-9]+ skipped)?' "$OUT/$name.log" | tail -1)
  fi
  record "$name" "$state" "$t" "$note"
}

if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the checkout, not an installed copy

CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [[ "${DRY_RUN:-0}" == 1 || "$CUDA" != 1 ]]; then
  MODE=cpu; DEVICE=cpu; AMP=fp32
  log "CPU mode (DRY_RUN=${DRY_RUN:-0}, CUDA available: $CUDA): tiny shapes, no build, CUDA tests skip"
else
  MODE=gpu; DEVICE=cuda; AMP=bf16
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
fi
"$PY" -c "import torch, setuptools; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'setuptools', setuptools.__version__)"

# ---- copy bandwidth: the ops' "% of copy bandwidth" is read against this run's own number ----
cat > "$OUT/bandwidth.py" <<'EOF'
import sys, time, torch
device = sys.argv[1]
nbytes = (4 << 30) if device == "cuda" else (256 << 20)
x = torch.empty(nbytes, dtype=torch.uint8, device=device)
for _ in range(2):
    y = x.clone()
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
sync(); t = time.perf_counter(); n = 10
for _ in range(n):
    y = x.clone()
sync(); dt = time.perf_counter() - t
print(f"copy bandwidth ({device}, clone of {nbytes >> 20} MiB, read + write): {2 * nbytes * n / dt / 1e9:.0f} GB/s")
EOF
phase bandwidth 30 "$PY" "$OUT/bandwidth.py" "$DEVICE"

# ---- build ----
if [[ $MODE == gpu ]]; then
  SETUPTOOLS_OK=$("$PY" -c "import setuptools; print(int(int(setuptools.__version__.split('.')[0]) >= 77))")
  if [[ "$SETUPTOOLS_OK" != 1 ]]; then
    log "setuptools < 77 and no newer wheel in .whl/: the build cannot read pyproject.toml's PEP 639 license"
    record build failed 0 "setuptools < 77 (put a wheel in .whl/)"
  else
    rm -rf build relground/_C*.so
    phase build 240 env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="$(nproc)" \
      "$PY" setup.py -q build_ext --inplace
  fi
  "$PY" -c "import relground, json; print(json.dumps(relground.build_info()))" \
    || { log "no native ops: the rest runs on the reference ops"; export RELGROUND_ALLOW_FALLBACK=1; }
else
  record build skipped 0 "CPU mode: the existing build"
fi

# ---- tests ----
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -p no:logging -rs)
phase op_tests_cuda 75 "${PYTEST[@]}" tests/ops -k cuda
phase smoke_cuda 75 "${PYTEST[@]}" tests/engine/test_benchmark.py -k cuda
phase decode_cuda 60 "${PYTEST[@]}" tests/data/test_decode_paths.py -k cuda  # nvJPEG + side-stream prefetch vs PIL
phase graph_cuda 90 "${PYTEST[@]}" tests/engine/test_cuda_graph.py -m needs_cuda  # replayed steps vs eager steps

# ---- training-step benchmarks: each its own process and timeout; the JSON lines go to $OUT/train_step.jsonl ----
if [[ $MODE == gpu ]]; then
  # the authors' code (= "faithful") at the paper's shapes; every step phase changes only speed options on it
  BENCH=(--config flickr30k_reir_authors.yaml --synthetic-shapes --steps 6 --warmup 2 --json
         --set train.device=cuda --set model.refine_start_iteration=0 --set "data.num_workers=$(( $(nproc) > 8 ? 8 : $(nproc) ))")
  LIMIT=60
else
  BENCH=(--config synthetic.yaml --synthetic-shapes --steps 1 --warmup 1 --json --images 10 --height 64 --width 96
         --proposals 8 --set train.device=cpu --set model.cache_features=false --set solver.ims_per_batch=10
         --set data.num_workers=0)
  LIMIT=60
fi
train_step() {  # NAME EXTRA...
  local name=$1; shift
  phase "$name" "$LIMIT" "$PY" -m relground.cli.main benchmark "${BENCH[@]}" "$@"
  tail -n 1 "$OUT/$name.log" | grep '^{' | "$PY" -c "import json, sys; d = json.load(sys.stdin); d['phase'] = '$name'; print(json.dumps(d))" \
    >> "$OUT/train_step.jsonl" 2>/dev/null || true
}
rm -f "$OUT/train_step.jsonl"
if [[ $MODE == gpu ]]; then
  train_step step_faithful_fp32 --set train.amp=fp32
  train_step step_faithful_bf16 --set train.amp=bf16
  train_step step_fast_bf16 --set train.amp=bf16 --set model.box_head=fast
  LIMIT=100 train_step step_fastest --set train.amp=bf16 --set model.box_head=fast --set data.captions_per_image=5 \
    --set model.fold_backbone_bn=true --set model.channels_last=true --set data.loader=torchvision --compile
  # one capture per bucketed batch shape (3 warm-up steps each) before the replays: a longer timeout
  LIMIT=120 train_step step_cuda_graph --set train.amp=bf16 --set model.box_head=fast --set model.static_shapes=true \
    --set data.shape_buckets=true --set train.cuda_graph=true
else
  train_step step_today_cpu --per-pair-backbone
  train_step step_fastest_cpu --set data.captions_per_image=5 --set model.fold_backbone_bn=true
  record step_cuda_graph skipped 0 "CPU mode: train.cuda_graph needs CUDA"
fi

# ---- op benchmarks (last: the training step matters more when the budget runs short) ----
if [[ $MODE == gpu ]]; then
  phase bench_roi_align_avg 40 "$PY" bench/bench_roi_align_avg.py
  phase bench_batched_ops 40 "$PY" bench/bench_batched_ops.py
fi

# ---- summary ----
echo
log "summary ($MODE mode, $(( $(date +%s) - START )) s)"
printf '%-22s %-8s %6s  %s\n' phase state sec note
for i in "${!NAMES[@]}"; do
  printf '%-22s %-8s %6s  %s\n' "${NAMES[$i]}" "${STATES[$i]}" "${SECONDS_USED[$i]}" "${NOTES[$i]}"
done
if [[ -s "$OUT/train_step.jsonl" ]]; then
  echo
  "$PY" - "$OUT/train_step.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print(f"{'phase':<20}{'pairs/s':>9}{'step ms':>9}{'data':>7}{'bb':>7}{'heads':>7}{'loss':>7}{'bwd':>7}{'opt':>6}"
      f"{'bb img':>7}{'peak MB':>9}{'dev pairs/s':>12}{'paper h':>9}")
for r in rows:
    ms = lambda k: "-" if r.get(k) is None else f"{r[k]:.0f}"
    dev = (r.get("device_batch") or {}).get("pairs_per_s")
    print(f"{r['phase']:<20}{r['pairs_per_s']:9.1f}{r['step_ms']:9.0f}{ms('data_ms'):>7}{ms('backbone_ms'):>7}"
          f"{ms('heads_ms'):>7}{ms('losses_ms'):>7}{ms('backward_ms'):>7}{ms('optimizer_ms'):>6}"
          f"{'-' if r.get('backbone_images_per_step') is None else r['backbone_images_per_step']:>7}"
          f"{r['peak_memory_mb']:9.0f}{'-' if dev is None else f'{dev:.1f}':>12}{r['paper_schedule_hours']:9.2f}")
print(f"device: {rows[0]['device']}")
for r in rows:
    if r.get("cuda_graph_counts"):
        print(f"{r['phase']}: CUDA-graph steps {r['cuda_graph_counts']} (captured / replayed / eager, warm-up included)")
EOF
fi
failed=0
for s in "${STATES[@]}"; do [[ $s == failed || $s == timeout ]] && failed=1; done
log "done (exit $failed)"
exit "$failed"
