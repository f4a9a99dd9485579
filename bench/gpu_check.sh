#!/usr/bin/env bash
# The GPU check, for one prepared non-interactive run on a single-GPU machine (H100/H200, torch with CUDA, no network).
# First contact: nothing here has run on a GPU before, so every phase runs under its own `timeout`, a failing phase does
# not stop the next, and the summary says what ran, passed, failed, timed out or was skipped, with the last lines of
# every failing phase.
#
# What comes back, in $OUT (3 files, a device run returns at most 8):
#   gpu_check.log   every phase's full output, one section each
#   results.jsonl   one JSON line per phase (phase, state, seconds, note) and per training-step benchmark (its JSON)
#   summary.txt     the summary printed at the end (< 12,000 characters: it fits the device tool's output tail)
# The console shows one line per phase and the summary, nothing else.
#
# Budget: BUDGET_S=480 s for the whole script, summary included. A phase gets min(its timeout, what is left) and is
# skipped when less than half its timeout is left; PHASES="build op_tests_cuda ..." runs a subset (a second run for
# what the first skipped). Phases, most important first: bandwidth | build (relground._C, FORCE_CUDA, one arch; the
# CPU CUDA-semantics runtime builds beside it) | op_tests_cuda | cudasim_vs_gpu (the kernels in the CPU runtime against
# the same kernels on the GPU, tests/cudasim) | graph_cuda | smoke_cuda | compile_fastest (the cold inductor compile
# of the fastest step, its own phase: its seconds are the compile time; it fills the inductor cache step_fastest then
# reads) | step_fast_bf16 | step_fastest | step_cuda_graph | step_faithful_bf16 | step_faithful_fp32 | decode_cuda |
# bench_roi_align_avg | bench_batched_ops. Steps are at the paper's shapes (ResNet-101, 40 pairs of 600x1000, M = 50).
#
# Device tool: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
# Optional wheels for packages missing there travel in .whl/ (git-ignored), e.g. hypothesis and setuptools>=77.
# Without CUDA (or with DRY_RUN=1) the same phases run in CPU mode at tiny shapes (no build; CUDA tests skip):
#   DRY_RUN=1 PY=.venv/bin/python bash bench/gpu_check.sh
# Record the summary with card, date and command in bench/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/relground-gpu-check}
PY=${PY:-python3}
BUDGET_S=${BUDGET_S:-480}
RESERVE_S=15  # kept for the summary
PHASES=${PHASES:-all}
START=$(date +%s)
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu-check-work.XXXXXX)  # phase logs, helper scripts, the inductor cache: not in $OUT
LOG=$OUT/gpu_check.log; JSONL=$OUT/results.jsonl; SUMMARY=$OUT/summary.txt
: > "$LOG"; : > "$JSONL"; rm -f "$SUMMARY"
export TORCHINDUCTOR_CACHE_DIR=$WORK/inductor
say() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
left() { echo $((BUDGET_S - RESERVE_S - ($(date +%s) - START))); }
wanted() { [[ $PHASES == all || " $PHASES " == *" $1 "* ]]; }

# record NAME STATE SECONDS NOTE: one JSON line in results.jsonl.
record() {
  "$PY" -c 'import json, sys; print(json.dumps({"phase": sys.argv[1], "state": sys.argv[2], "seconds": int(sys.argv[3]), "note": sys.argv[4]}))' \
    "$1" "$2" "$3" "${4:-}" >> "$JSONL"
  say "$1: $2 (${3} s) ${4:-}"
}

# phase NAME TIMEOUT_S COMMAND...: runs COMMAND under `timeout`, its output to $WORK/NAME.log and a section of
# gpu_check.log. pytest's exit 5 (nothing collected) and a run where everything skipped count as "skipped".
phase() {
  local name=$1 limit=$2; shift 2
  wanted "$name" || return 0
  if (( $(left) < limit / 2 )); then record "$name" skipped 0 "budget: $(left) s left"; return 0; fi
  (( limit > $(left) )) && limit=$(left)
  local t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$? t=$(( $(date +%s) - t0 ))
  { echo; echo "######## $name (exit $rc, $t s): $*"; cat "$WORK/$name.log"; } >> "$LOG"
  local state=passed note=""
  if (( rc == 124 || rc == 137 )); then state=timeout; note="after ${limit} s"
  elif (( rc == 5 )); then state=skipped; note="nothing collected"
  elif (( rc != 0 )); then state=failed; note="exit $rc"
  elif grep -Eq '^[0-9]+ skipped' "$WORK/$name.log" && ! grep -Eq '[0-9]+ passed' "$WORK/$name.log"; then
    state=skipped; note=$(grep -Eo '[0-9]+ skipped' "$WORK/$name.log" | tail -1)
  elif grep -Eq '[0-9]+ passed' "$WORK/$name.log"; then
    note=$(grep -Eo '[0-9]+ passed(, [0-9]+ skipped)?' "$WORK/$name.log" | tail -1)
  fi
  record "$name" "$state" "$t" "$note"
}

# The last line of a log that is a JSON object (a warning printed after it does not lose the row), tagged.
cat > "$WORK/last_json.py" <<'EOF'
import json, sys
path, phase = sys.argv[1], sys.argv[2]
for line in reversed(open(path, errors="replace").read().splitlines()):
    line = line.strip()
    if line.startswith("{"):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            print(json.dumps({"phase": phase, "kind": "train_step", **row}))
            break
EOF

if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl \
    >> "$LOG" 2>&1 && export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the checkout, not an installed copy

CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [[ "${DRY_RUN:-0}" == 1 || "$CUDA" != 1 ]]; then
  MODE=cpu; DEVICE=cpu
  say "CPU mode (DRY_RUN=${DRY_RUN:-0}, CUDA available: $CUDA): tiny shapes, no build, CUDA tests skip"
else
  MODE=gpu; DEVICE=cuda
  say "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
fi
say "$("$PY" -c "import torch, setuptools; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'setuptools', setuptools.__version__)" 2>&1 | tail -1)"

# ---- copy bandwidth: the ops' "% of copy bandwidth" is read against this run's own number ----
cat > "$WORK/bandwidth.py" <<'EOF'
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
phase bandwidth 30 "$PY" "$WORK/bandwidth.py" "$DEVICE"
[[ -f $WORK/bandwidth.log ]] && say "$(tail -n 1 "$WORK/bandwidth.log")"

# ---- build: relground._C, and the CPU CUDA-semantics runtime beside it (for cudasim_vs_gpu) ----
( nice "$PY" scripts/build_cudasim.py --jobs 4 > "$WORK/cudasim_build.log" 2>&1 ) &
CUDASIM_BUILD=$!
if [[ $MODE == gpu ]] && wanted build; then
  if [[ $("$PY" -c "import setuptools; print(int(int(setuptools.__version__.split('.')[0]) >= 77))") != 1 ]]; then
    record build failed 0 "setuptools < 77 and no newer wheel in .whl/ (pyproject.toml's PEP 639 license)"
  else
    rm -rf build/temp* build/lib* relground/_C*.so
    phase build 240 env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS=12 \
      "$PY" setup.py -q build_ext --inplace
  fi
else
  record build skipped 0 "CPU mode or not in PHASES: the existing build"
fi
say "build_info: $("$PY" -c "import relground, json; print(json.dumps(relground.build_info()))" 2>&1 | tail -1)"
"$PY" -c "import relground; assert relground.HAS_OPS" 2>/dev/null \
  || { say "no native ops: the rest runs on the reference ops"; export RELGROUND_ALLOW_FALLBACK=1; }

# ---- tests ----
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -p no:logging -rs)
phase op_tests_cuda 75 "${PYTEST[@]}" tests/ops -k cuda
if wanted cudasim_vs_gpu; then
  if (( $(left) < 60 )); then record cudasim_vs_gpu skipped 0 "budget: $(left) s left"
  else
    t0=$(date +%s); wait "$CUDASIM_BUILD"; rc=$?  # the runtime's build, started beside relground._C's
    { echo; echo "######## cudasim build (exit $rc, $(( $(date +%s) - t0 )) s waited)"; cat "$WORK/cudasim_build.log"; } >> "$LOG"
    if (( rc != 0 )); then cp "$WORK/cudasim_build.log" "$WORK/cudasim_vs_gpu.log"; record cudasim_vs_gpu failed 0 "runtime build failed"
    else phase cudasim_vs_gpu 90 "${PYTEST[@]}" -s tests/cudasim/test_kernels_on_cpu.py -k test_runtime_matches_the_gpu
    fi
  fi
else
  kill "$CUDASIM_BUILD" 2>/dev/null
fi
phase graph_cuda 90 "${PYTEST[@]}" tests/engine/test_cuda_graph.py -m needs_cuda  # replayed steps vs eager steps
phase smoke_cuda 75 "${PYTEST[@]}" tests/engine/test_benchmark.py -k cuda

# ---- training-step benchmarks: each its own process and timeout; their JSON lines go to results.jsonl ----
if [[ $MODE == gpu ]]; then
  BENCH=(--config flickr30k_reir_authors.yaml --synthetic-shapes --steps 6 --warmup 2 --json
         --set train.device=cuda --set model.refine_start_iteration=0 --set "data.num_workers=$(( $(nproc) > 8 ? 8 : $(nproc) ))")
  FASTEST=(--set train.amp=bf16 --set model.box_head=fast --set data.captions_per_image=5
           --set model.fold_backbone_bn=true --set model.channels_last=true --set data.loader=torchvision --compile)
else
  BENCH=(--config synthetic.yaml --synthetic-shapes --steps 1 --warmup 1 --json --images 10 --height 64 --width 96
         --proposals 8 --set train.device=cpu --set model.cache_features=false --set solver.ims_per_batch=10
         --set data.num_workers=0)
fi
train_step() {  # NAME LIMIT EXTRA...
  local name=$1 limit=$2; shift 2
  phase "$name" "$limit" "$PY" -m relground.cli.main benchmark "${BENCH[@]}" "$@"
  [[ -f $WORK/$name.log ]] && "$PY" "$WORK/last_json.py" "$WORK/$name.log" "$name" >> "$JSONL"
}
if [[ $MODE == gpu ]]; then
  # the cold compile alone (1 warm-up step, 1 timed): its seconds are the compile time; the cache it fills is
  # what step_fastest reads
  phase compile_fastest 150 "$PY" -m relground.cli.main benchmark "${BENCH[@]}" "${FASTEST[@]}" --steps 1 --warmup 1
  train_step step_fast_bf16 60 --set train.amp=bf16 --set model.box_head=fast
  train_step step_fastest 60 "${FASTEST[@]}"
  # one capture per bucketed batch shape (3 warm-up steps each) before the replays: a longer timeout
  train_step step_cuda_graph 120 --set train.amp=bf16 --set model.box_head=fast --set model.static_shapes=true \
    --set data.shape_buckets=true --set train.cuda_graph=true
  train_step step_faithful_bf16 60 --set train.amp=bf16
  train_step step_faithful_fp32 60 --set train.amp=fp32
else
  wanted compile_fastest && record compile_fastest skipped 0 "CPU mode: the fastest step compiles on CUDA only"
  train_step step_today_cpu 60 --per-pair-backbone
  train_step step_fastest_cpu 60 --set data.captions_per_image=5 --set model.fold_backbone_bn=true
  wanted step_cuda_graph && record step_cuda_graph skipped 0 "CPU mode: train.cuda_graph needs CUDA"
fi
phase decode_cuda 90 "${PYTEST[@]}" tests/data/test_decode_paths.py -k cuda  # nvJPEG + side-stream prefetch vs PIL

# ---- op benchmarks (last: the training step matters more when the budget runs short) ----
if [[ $MODE == gpu ]]; then
  phase bench_roi_align_avg 60 "$PY" bench/bench_roi_align_avg.py
  phase bench_batched_ops 40 "$PY" bench/bench_batched_ops.py
fi
kill "$CUDASIM_BUILD" 2>/dev/null; wait 2>/dev/null

# ---- summary: the phase table, the benchmark rows, every failing phase's last lines; < 12,000 characters ----
cat > "$WORK/summary.py" <<'EOF'
import json, os, sys
jsonl, work, mode, seconds = sys.argv[1:5]
rows = [json.loads(l) for l in open(jsonl) if l.strip()]
phases = [r for r in rows if "state" in r and r.get("kind") != "train_step"]
steps = [r for r in rows if r.get("kind") == "train_step"]
out = [f"summary ({mode} mode, {seconds} s)", f"{'phase':<22} {'state':<8} {'sec':>5}  note"]
out += [f"{p['phase']:<22} {p['state']:<8} {p['seconds']:>5}  {p['note'][:70]}" for p in phases]
for name in ("bandwidth", "bench_roi_align_avg", "bench_batched_ops"):
    path = os.path.join(work, name + ".log")
    if os.path.exists(path) and any(p["phase"] == name and p["state"] == "passed" for p in phases):
        out += ["", f"{name}:"] + [l[:150] for l in open(path, errors="replace").read().splitlines()[-14:]]
if steps:
    out += ["", f"{'phase':<20}{'pairs/s':>9}{'step ms':>9}{'data':>7}{'bb':>7}{'heads':>7}{'loss':>7}{'bwd':>7}"
            f"{'opt':>6}{'peak MB':>9}{'paper h':>9}"]
    for r in steps:
        f = lambda k, w, p=0: f"{'-' if r.get(k) is None else format(r[k], f'.{p}f'):>{w}}"
        out.append(f"{r['phase']:<20}{f('pairs_per_s', 9, 1)}{f('step_ms', 9)}{f('data_ms', 7)}{f('backbone_ms', 7)}"
                   f"{f('heads_ms', 7)}{f('losses_ms', 7)}{f('backward_ms', 7)}{f('optimizer_ms', 6)}"
                   f"{f('peak_memory_mb', 9)}{f('paper_schedule_hours', 9, 2)}")
        if r.get("cuda_graph_counts"):
            out.append(f"  {r['phase']}: CUDA-graph steps {r['cuda_graph_counts']} (captured / replayed / eager)")
path = os.path.join(work, "cudasim_vs_gpu.log")
if os.path.exists(path):  # the CPU runtime against the GPU: how many outputs are bit-identical, per op and dtype
    same = [l.strip().lstrip(".")[:90] for l in open(path, errors="replace") if "bit-identical to the GPU" in l]
    out += ["", "cudasim_vs_gpu:"] + same[:16] if same else []
compile_row = [p for p in phases if p["phase"] == "compile_fastest" and p["state"] == "passed"]
if compile_row:
    out.append(f"cold inductor compile of the fastest step (+2 steps): {compile_row[0]['seconds']} s")
bad = [p for p in phases if p["state"] in ("failed", "timeout")]
budget = max(800, (10500 - len("\n".join(out))) // max(len(bad), 1))
for p in bad:
    path = os.path.join(work, p["phase"] + ".log")
    lines = open(path, errors="replace").read().splitlines()[-15:] if os.path.exists(path) else []
    tail = "\n".join(l[:200] for l in lines)[-budget:]
    out += ["", f"--- {p['phase']} ({p['state']}, {p['note']}): last lines ---", tail]
out.append("")
out.append(f"files in $OUT: gpu_check.log (every phase's output), results.jsonl, summary.txt")
print("\n".join(out)[:11500])
EOF
FAILED=$("$PY" -c 'import json, sys; print(int(any(json.loads(l).get("state") in ("failed", "timeout") for l in open(sys.argv[1]) if l.strip())))' "$JSONL")
echo
"$PY" "$WORK/summary.py" "$JSONL" "$WORK" "$MODE" "$(( $(date +%s) - START ))" | tee "$SUMMARY"
say "done (exit $FAILED, $(( $(date +%s) - START )) s); $(ls "$OUT" | wc -l) files in $OUT"
rm -rf "$WORK"
exit "$FAILED"
