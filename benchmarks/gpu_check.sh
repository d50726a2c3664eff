#!/usr/bin/env bash
# Validate and benchmark every CUDA path of vidmem_ext in one command, on a fresh machine that has a
# CUDA build of torch, nvcc and no network; about 7 minutes on an H100/H200 with 16 cores.
#
#   benchmarks/gpu_check.sh [--out DIR] [--wheels DIR] [--no-build] [--deadline S]  # on a GPU machine
#   benchmarks/gpu_check.sh --cpu [--out DIR] [--no-build]                          # the same stages on the CPU
#
#   --out DIR     where every log and result goes (at most 8 files; default gpu_check_out)
#   --deadline S  finish within S seconds whatever happens: each stage's limit is cut to what is left
#                 (less 20 s for the summary), so a lease's timeout never swallows the summary
#   --wheels DIR  install the peers (accelerated-scan, fla-core) from this folder of wheels first
#                 (pip --no-index --no-deps: nothing is downloaded)
#   --no-build    use the extension as already built (stage 1 then only prints `info`)
#   --cpu         no GPU: build what this torch allows, the suite, the sanitizer driver run plainly
#                 on the CPU, and `bench --quick --device cpu`
#
# Stages, each with a time limit (expected times on an H200, 16 cores):
#   1 build       in place, TORCH_CUDA_ARCH_LIST=9.0, all cores; `python -m vidmem_ext info`
#                 limit 240 s, expected ~90 s (224 s on the H200's Xeon when the CPU momentum kernels were
#                 one unit; now one per instruction set, the largest a third of that). Then the
#                 __launch_bounds__ variant of the momentum backward builds in a copy in the
#                 background (half the cores) while 2-4 run.
#   2 tests       on a GPU the tests under the cuda marker (CI runs the CPU suite, twice); with --cpu
#                 the suite without the slow tests                   limit 120 s, expected ~60 s
#   3 bench       python -m vidmem_ext bench --device cuda --no-compile, every op, our kernels and the
#                 references (11/20 of the stage); then, with --wheels, the momentum bench against the
#                 peers (the rest). Before the sanitizer: the figures matter more if the deadline cuts.
#                                                                    limit 120 s, expected ~110 s
#   4 sanitizer   compute-sanitizer memcheck, racecheck and synccheck over
#                 benchmarks/sanitizer_driver.py (every CUDA kernel path once)
#                                                                    limit 90 s (30 s per tool), expected ~75 s
#   5 launch bounds  momentum bench (vidmem_ext only) of the default and the variant build, back to
#                 back                                               limit 60 s, expected ~40 s
#   6 profile     Nsight Compute (ncu --clock-control none) over benchmarks/profile_driver.py: the
#                 cases where the H200 missed the goals, one line per kernel in the summary
#                                                                    limit 60 s, expected ~40 s
# Files under --out: check.log (build, info, launch-bounds build), tests.log, sanitizer.log,
# bench.json, bench.md, bench_peers.json (with --wheels), bench_launch_bounds.json, summary.txt
# (bench.png too with --cpu). The summary is printed last.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

CPU=0 OUT=gpu_check_out WHEELS="" BUILD=1 DEADLINE=""
usage_error() { echo "gpu_check.sh: $* (see --help)" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) CPU=1 ;;
    --out|--wheels|--deadline)
      [ $# -ge 2 ] && [ -n "$2" ] || usage_error "$1 needs a value"
      case "$1" in --out) OUT="$2" ;; --wheels) WHEELS="$2" ;; --deadline) DEADLINE="$2" ;; esac
      shift ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,/^set -uo pipefail/p' "$0" | sed '$d'; exit 0 ;;
    *) usage_error "unknown argument $1" ;;
  esac
  shift
done
# Every option checked before any stage runs (each stage would otherwise fail on its own).
if [ -n "$DEADLINE" ] && ! [[ "$DEADLINE" =~ ^[0-9]+$ ]]; then usage_error "--deadline must be whole seconds, got $DEADLINE"; fi
if [ -n "$WHEELS" ]; then WHEELS="$(cd "$WHEELS" 2>/dev/null && pwd)" || usage_error "--wheels: no such folder"; fi
mkdir -p "$OUT" 2>/dev/null && OUT="$(cd "$OUT" && pwd)" || usage_error "--out $OUT: cannot make that folder"
cd "$ROOT"
rm -f "$OUT"/{check.log,tests.log,sanitizer.log,bench.json,bench.md,bench.png,bench_peers.json,bench_launch_bounds.json,summary.txt}
PY="${PYTHON:-$(command -v python || command -v python3 || echo python)}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
CORES="$(nproc 2>/dev/null || echo 2)"
if [ "$CPU" = 1 ]; then
  #          build tests bench driver lb profile
  LIMITS=(0 1200 1500 600 600 0 120)
else
  LIMITS=(0 240 120 120 90 60 60)
  export TORCH_CUDA_ARCH_LIST=9.0 VIDMEM_EXT_CUDA=1
fi
START=$SECONDS
declare -A RESULT
log() { echo "$*" | tee -a "$OUT/check.log"; }
stage() { echo; log "== stage $1 ($(date +%H:%M:%S), $((SECONDS - START)) s in, limit $(limit_of "${LIMITS[$1]}") s): $2"; }
# A stage's limit, cut to what the --deadline leaves (20 s kept for the summary; at least 1 s).
limit_of() {
  local limit="$1"
  if [ -n "$DEADLINE" ]; then
    local left=$((DEADLINE - (SECONDS - START) - 20))
    [ "$left" -lt "$limit" ] && limit="$left"
  fi
  [ "$limit" -lt 1 ] && limit=1
  echo "$limit"
}
# timeout puts the command in its own process group and signals the whole group (a build's
# compilers too). Under 5 s left: the command is not started at all (reported as timed out).
limited() {
  local limit; limit="$(limit_of "$1")"; shift
  [ -n "$DEADLINE" ] && [ "$limit" -lt 5 ] && { echo "not started: the --deadline is reached: $*" >&2; return 124; }
  timeout -k 5 "$limit" "$@"
}
# A CUDA tool: on the PATH, else in a CUDA root ($CUDA_HOME, nvcc's, /usr/local/cuda) under bin/ or
# its own folder, else the first executable of the further paths given; empty if none.
cuda_tool() {
  local name="$1" root path; shift
  command -v "$name" && return
  for root in "${CUDA_HOME:-}" "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")" /usr/local/cuda; do
    for path in "$root/bin/$name" "$root/$name/$name"; do
      [ -n "$root" ] && [ -x "$path" ] && { echo "$path"; return; }
    done
  done
  for path in "$@"; do [ -x "$path" ] && { echo "$path"; return; }; done
  return 0
}
status() { case "$1" in 0) echo ok ;; 124|137) echo "TIMED OUT" ;; *) echo "FAILED (exit $1)" ;; esac; }

# ---------------------------------------------------------------- 1 build
stage 1 "build in place ($([ "$CPU" = 1 ] && echo "CPU run" || echo "TORCH_CUDA_ARCH_LIST=9.0"), $CORES cores)"
if [ -n "$WHEELS" ]; then
  log "peers from $WHEELS (no index, no dependencies):"
  limited 120 "$PY" -m pip install --no-index --no-deps --find-links "$WHEELS" accelerated-scan fla-core >>"$OUT/check.log" 2>&1 \
    && log "  installed" || log "  not installed (see check.log); the bench reports them as skipped"
fi
if [ "$BUILD" = 1 ]; then
  MAX_JOBS="$CORES" limited "${LIMITS[1]}" "$PY" setup.py build_ext --inplace >>"$OUT/check.log" 2>&1
  RESULT[build]="$(status $?)"
else
  RESULT[build]="skipped (--no-build)"
fi
limited 60 "$PY" -m vidmem_ext info 2>&1 | tee -a "$OUT/check.log"
log "build: ${RESULT[build]} ($((SECONDS - START)) s)"

# accelerated-scan's warp scan builds a CUDA extension with nvcc on its first import: build it in the
# background now, so that the bench (stage 3) finds it ready or leaves it out rather than waiting.
WARP_PID=""
if [ "$CPU" = 0 ] && [ -n "$WHEELS" ]; then
  WARP_DIR="$(mktemp -d)"
  (limited 300 "$PY" -c "import accelerated_scan.warp" >"$WARP_DIR/log" 2>&1; echo $? >"$WARP_DIR/rc") &
  WARP_PID=$!
fi

# The launch-bounds variant builds in a copy of the checkout, in the background, while stages 2-4 run.
VARIANT=""
if [ "$CPU" = 0 ] && [ "${RESULT[build]}" = ok ]; then
  VARIANT="$(mktemp -d)/vidmem_ext_launch_bounds"
  mkdir -p "$VARIANT"
  (git ls-files -z --cached --others --exclude-standard 2>/dev/null || find . -path ./build -prune -o -type f -print0) \
    | tar --null -T - -cf - | tar -xf - -C "$VARIANT"
  (cd "$VARIANT" && VIDMEM_EXT_BWD_LAUNCH_BOUNDS=1 MAX_JOBS=$((CORES / 2 > 0 ? CORES / 2 : 1)) \
    limited 600 "$PY" setup.py build_ext --inplace >"$VARIANT/build.log" 2>&1; echo $? >"$VARIANT/build.rc") &
  VARIANT_PID=$!
fi

# ---------------------------------------------------------------- 2 tests
if [ "$CPU" = 1 ]; then
  # The slow CPU-only tests (the CUDA emulator, inductor compiles) are left out: CI's main suite runs
  # them, and their single-file builds alone would take most of this stage's time.
  stage 2 "the test suite without the slow tests"
  MARKERS="not slow"
else
  # Device time is short: the GPU runs only what needs it; CI runs the CPU suite with two torch versions.
  stage 2 "the tests under the cuda marker"
  MARKERS="cuda"
fi
limited "${LIMITS[2]}" "$PY" -m pytest -q -p no:cacheprovider -m "$MARKERS" tests >"$OUT/tests.log" 2>&1
rc=$?
tail -n 3 "$OUT/tests.log"
RESULT[tests]="$(status $rc): $(grep -E '^[=]* ?[0-9]+ (passed|failed)|[0-9]+ (passed|failed|error)' "$OUT/tests.log" | tail -n 1 | tr -d '=' | xargs)"

# ---------------------------------------------------------------- 3 bench
stage 3 "python -m vidmem_ext bench"
if [ "$CPU" = 1 ]; then
  limited "${LIMITS[3]}" "$PY" -m vidmem_ext bench --device cpu --quick --out "$OUT" --no-progress >>"$OUT/check.log" 2>&1
  RESULT[bench]="$(status $?)"
else
  # Our figures first, every op, without the peers (whose Triton autotuning and nvcc builds would eat
  # the budget) and without torch.compile (compiling the loop for every case would take the stage);
  # then the momentum bench against the peers with what is left. bench.png stays behind ($OUT holds
  # 8 files at most); bench.json has its data.
  total="$(limit_of "${LIMITS[3]}")"
  stage_end=$((SECONDS + total))
  main_budget=$((total * 11 / 20))
  tmp_bench="$(mktemp -d)"
  limited $((main_budget + 15)) "$PY" -m vidmem_ext bench --device cuda --no-compile --impls "vidmem_ext,loop,matrix" \
    --budget "$main_budget" --out "$tmp_bench" --no-progress >>"$OUT/check.log" 2>&1
  RESULT[bench]="$(status $?)"
  cp "$tmp_bench"/bench.json "$tmp_bench"/bench.md "$OUT"/ 2>/dev/null
  if [ -n "$WHEELS" ]; then
    peers="vidmem_ext,accelerated-scan triton,fla hgrn chunk,fla hgrn fused_recurrent"
    if [ -n "$WARP_PID" ] && ! kill -0 "$WARP_PID" 2>/dev/null && [ "$(cat "$WARP_DIR/rc" 2>/dev/null)" = 0 ]; then
      peers+=",accelerated-scan warp"
    else
      log "accelerated-scan warp left out: its nvcc build had not finished or failed"
    fi
    left="$(limit_of $((stage_end - SECONDS)))"
    if [ "$left" -lt 20 ]; then
      log "peers: not run, $left s left in the stage"
      RESULT[bench]+="; peers: not run (no time left)"
    else
      limited "$left" "$PY" -m vidmem_ext bench --device cuda --no-compile --ops momentum --impls "$peers" \
        --budget $((left - 15)) --stem bench_peers --out "$tmp_bench" --no-progress >>"$OUT/check.log" 2>&1
      RESULT[bench]+="; peers: $(status $?)"
      cp "$tmp_bench"/bench_peers.json "$OUT"/ 2>/dev/null
    fi
  fi
  rm -rf "$tmp_bench"
fi
log "bench: ${RESULT[bench]}"

# ---------------------------------------------------------------- 4 sanitizer
stage 4 "compute-sanitizer over every CUDA kernel path"
if [ "$CPU" = 1 ]; then
  echo "== the driver on the CPU (no sanitizer in a --cpu run)" >"$OUT/sanitizer.log"
  limited "${LIMITS[4]}" "$PY" benchmarks/sanitizer_driver.py --device cpu >>"$OUT/sanitizer.log" 2>&1
  RESULT[sanitizer]="skipped (--cpu); driver on the CPU: $(status $?), $(tail -n 1 "$OUT/sanitizer.log")"
else
  SANITIZER="$(cuda_tool compute-sanitizer)"
  : >"$OUT/sanitizer.log"
  if [ -z "$SANITIZER" ]; then
    RESULT[sanitizer]="not run: compute-sanitizer not found"
  else
    summary=""
    for tool in memcheck racecheck synccheck; do
      echo "== $tool" >>"$OUT/sanitizer.log"
      limited $((LIMITS[4] / 3)) "$SANITIZER" --tool "$tool" --error-exitcode 0 \
        "$PY" benchmarks/sanitizer_driver.py --device cuda >>"$OUT/sanitizer.log" 2>&1
      rc=$?
      # memcheck and synccheck end with "ERROR SUMMARY: N errors", racecheck with
      # "RACECHECK SUMMARY: H hazards displayed (N errors, W warnings)"
      errors="$(sed -n "/^== $tool/,\$p" "$OUT/sanitizer.log" | grep -oE 'ERROR SUMMARY: [0-9]+|\([0-9]+ errors' \
        | tail -n 1 | grep -oE '[0-9]+')"
      driver="$(sed -n "/^== $tool/,\$p" "$OUT/sanitizer.log" | grep -E '^driver:' | tail -n 1)"
      if [ -n "$errors" ]; then
        summary+="$tool $errors errors${driver:+ ($driver)}$([ "$rc" != 0 ] && echo ", driver exit $rc"); "
      else
        summary+="$tool: could not attach or did not finish ($(status $rc)); "
      fi
    done
    RESULT[sanitizer]="${summary%; }"
  fi
fi
log "sanitizer: ${RESULT[sanitizer]}"

# ---------------------------------------------------------------- 5 launch bounds
stage 5 "the __launch_bounds__ variant of the momentum backward"
if [ -z "$VARIANT" ]; then
  RESULT[launch_bounds]="skipped ($([ "$CPU" = 1 ] && echo "--cpu" || echo "no build"))"
else
  # The variant build may still be running: wait for it only as long as the deadline allows.
  waited=0
  while kill -0 "$VARIANT_PID" 2>/dev/null && [ "$(limit_of "${LIMITS[5]}")" -gt 20 ] && [ "$waited" -lt 600 ]; do
    sleep 2; waited=$((waited + 2))
  done
  kill -0 "$VARIANT_PID" 2>/dev/null && { pkill -P "$VARIANT_PID" 2>/dev/null; kill "$VARIANT_PID" 2>/dev/null; }
  wait "$VARIANT_PID" 2>/dev/null
  [ -f "$VARIANT/build.rc" ] || echo 124 >"$VARIANT/build.rc"
  cat "$VARIANT/build.log" >>"$OUT/check.log"
  if [ "$(cat "$VARIANT/build.rc")" != 0 ]; then
    RESULT[launch_bounds]="variant build FAILED (see check.log)"
  else
    # Both builds timed back to back, here, with nothing building beside them: the main bench ran
    # while the variant built, and these calls are short enough for host load to move them 2x.
    half=$(( $(limit_of "${LIMITS[5]}") / 2 ))
    rc=0
    for build in default variant; do
      dir="$ROOT"; [ "$build" = variant ] && dir="$VARIANT"
      (cd "$dir" && PYTHONPATH="$dir" limited "$half" "$PY" -m vidmem_ext bench --device cuda --ops momentum \
        --impls vidmem_ext --no-compile --stem "$build" --out "$VARIANT/out" --no-progress) >>"$OUT/check.log" 2>&1 || rc=$?
    done
    timeout 30 "$PY" -c 'import json, sys; d = sys.argv[1]
json.dump({b: json.load(open(f"{d}/{b}.json")) for b in ("default", "variant")}, open(sys.argv[2], "w"))' \
      "$VARIANT/out" "$OUT/bench_launch_bounds.json" 2>>"$OUT/check.log"
    RESULT[launch_bounds]="$(status $rc)"
  fi
  rm -rf "$(dirname "$VARIANT")"
fi

# ---------------------------------------------------------------- 6 profile
stage 6 "Nsight Compute over the cases that missed the goals"
PROFILE_REPORT="$(mktemp)"
if [ "$CPU" = 1 ]; then
  limited "${LIMITS[6]}" "$PY" benchmarks/profile_driver.py --device cpu >>"$OUT/check.log" 2>&1
  RESULT[profile]="skipped (--cpu); driver on the CPU: $(status $?)"
else
  NCU="$(cuda_tool ncu /opt/nvidia/nsight-compute/*/ncu)"
  if [ -z "$NCU" ]; then
    RESULT[profile]="not run: ncu not found"
  else
    mapfile -t ncu_args < <(timeout 60 "$PY" benchmarks/profile_driver.py --ncu-args)
    csv="$(mktemp)"
    # --clock-control none: the card's clocks stay as they are (never change the card's settings)
    limited "${LIMITS[6]}" "$NCU" --clock-control none --profile-from-start off --target-processes all \
      "${ncu_args[@]}" --csv --page raw --log-file "$csv" "$PY" benchmarks/profile_driver.py >>"$OUT/check.log" 2>&1
    rc=$?
    timeout 30 "$PY" benchmarks/profile_driver.py --report "$csv" >"$PROFILE_REPORT" 2>&1
    { echo "== ncu ($NCU)"; cat "$csv"; cat "$PROFILE_REPORT"; } >>"$OUT/check.log"
    RESULT[profile]="$(status $rc), $(($(wc -l <"$PROFILE_REPORT") - 1)) kernels"
    rm -f "$csv"
  fi
fi
log "profile: ${RESULT[profile]}"

[ -n "$WARP_PID" ] && { kill "$WARP_PID" 2>/dev/null; wait "$WARP_PID" 2>/dev/null; echo "== accelerated-scan warp build (rc $(cat "$WARP_DIR/rc" 2>/dev/null))"; \
  tail -n 20 "$WARP_DIR/log"; rm -rf "$WARP_DIR"; } >>"$OUT/check.log" 2>&1

# ---------------------------------------------------------------- summary
{
  echo "==================== vidmem_ext gpu_check summary ($([ "$CPU" = 1 ] && echo "--cpu" || echo GPU), $((SECONDS - START)) s)"
  timeout 30 "$PY" - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
try:
    import torch
    print(f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; torch {torch.__version__}")
except Exception as exc:  # noqa: BLE001
    print(f"torch not importable: {exc}")
path = os.path.join(out, "bench.json")
if os.path.exists(path):
    data = json.load(open(path))
    print(f"bench on {data['device']}: {len(data['rows'])} rows")
    for goal in data.get("goals", []):
        print(f"  {goal}")
    peers = os.path.join(out, "bench_peers.json")
    if os.path.exists(peers):
        for goal in json.load(open(peers)).get("goals", []):
            if "faster than" in goal:
                print(f"  {goal}")
    lb = os.path.join(out, "bench_launch_bounds.json")
    if os.path.exists(lb):
        def times(rows):
            return {(r["case"], r["dtype"], r["mode"]): r["median_ms"] for r in rows
                    if r["impl"] == "vidmem_ext" and r["mode"] == "fwd+bwd" and r["median_ms"]}
        both = json.load(open(lb))
        base, variant = times(both["default"]["rows"]), times(both["variant"]["rows"])
        common = sorted(set(base) & set(variant))
        if common:
            ratios = sorted(variant[k] / base[k] for k in common)
            median = ratios[len(ratios) // 2]
            keep = "the __launch_bounds__ variant" if median < 0.98 else "the default build"
            print(f"  launch bounds: fwd+bwd time variant / default, median over {len(common)} cases = {median:.3f}"
                  f" (range {ratios[0]:.3f}..{ratios[-1]:.3f}): keep {keep}")
else:
    print("bench: no results")
EOF
  echo "build: ${RESULT[build]}"
  echo "tests: ${RESULT[tests]}"
  echo "sanitizer: ${RESULT[sanitizer]}"
  echo "bench: ${RESULT[bench]}"
  echo "launch bounds: ${RESULT[launch_bounds]}"
  echo "profile: ${RESULT[profile]}"
  sed 's/^/  /' "$PROFILE_REPORT"
  echo "files: $(cd "$OUT" && ls | xargs)"
} | tee "$OUT/summary.txt"

failed=0
[[ "${RESULT[build]}" == ok || "${RESULT[build]}" == skipped* ]] || failed=1
[[ "${RESULT[tests]}" == ok* ]] || failed=1
[[ "${RESULT[bench]}" == ok* ]] || failed=1
if [ "$CPU" = 1 ]; then
  [[ "${RESULT[sanitizer]}" == *"driver on the CPU: ok"* ]] || failed=1
  [[ "${RESULT[profile]}" == *"driver on the CPU: ok"* ]] || failed=1
else
  echo "${RESULT[sanitizer]}" | grep -qE '(memcheck|racecheck|synccheck) [1-9][0-9]* errors|driver exit' && failed=1
fi
exit "$failed"
