#!/usr/bin/env bash
# Validate and benchmark every CUDA path of vidmem_ext in one command, on a fresh machine that has a
# CUDA build of torch, nvcc and no network; about 8 minutes on an H100/H200 with 16 cores.
#
#   benchmarks/gpu_check.sh [--out DIR] [--wheels DIR] [--no-build]   # on a GPU machine
#   benchmarks/gpu_check.sh --cpu [--out DIR] [--no-build]            # the same stages on the CPU (.ci/run)
#
#   --out DIR     where every log and result goes (at most 8 files; default gpu_check_out)
#   --wheels DIR  install the peers (accelerated-scan, fla-core) from this folder of wheels first
#                 (pip --no-index --no-deps: nothing is downloaded)
#   --no-build    use the extension as already built (stage 1 then only prints `info`)
#   --cpu         no GPU: build what this torch allows, the suite, the sanitizer driver run plainly
#                 on the CPU, and `bench --quick --device cpu`
#
# Stages, each with a time limit (GPU limits sum to 480 s; expected times on an H200, 16 cores):
#   1 build       in place, TORCH_CUDA_ARCH_LIST=9.0, all cores; `python -m vidmem_ext info`
#                 limit 90 s, expected ~60 s. Then the __launch_bounds__ variant of the momentum
#                 backward builds in a copy in the background (half the cores) while stages 2-4 run.
#   2 tests       the suite (cuda marker included, slow CPU-only tests left out)
#                                                                    limit 140 s, expected ~90 s
#   3 sanitizer   compute-sanitizer memcheck, racecheck and synccheck over
#                 benchmarks/sanitizer_driver.py (every CUDA kernel path once)
#                                                                    limit 120 s (40 s per tool), expected ~75 s
#   4 bench       python -m vidmem_ext bench --device cuda --no-compile
#                                                                    limit 90 s (80 s budget), expected ~80 s
#   5 launch bounds  momentum bench (vidmem_ext only) of the variant build
#                                                                    limit 40 s, expected ~20 s
# Files under --out: check.log (build, info, launch-bounds build), tests.log, sanitizer.log,
# bench.json, bench.md, bench.png, bench_launch_bounds.json, summary.txt. The summary is printed last.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

CPU=0 OUT=gpu_check_out WHEELS="" BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) CPU=1 ;;
    --out) OUT="$2"; shift ;;
    --wheels) WHEELS="$2"; shift ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"  # relative to where the script was started
[ -n "$WHEELS" ] && WHEELS="$(cd "$WHEELS" && pwd)"
cd "$ROOT"
rm -f "$OUT"/{check.log,tests.log,sanitizer.log,bench.json,bench.md,bench.png,bench_launch_bounds.json,summary.txt}
PY="${PYTHON:-python}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
CORES="$(nproc 2>/dev/null || echo 2)"
if [ "$CPU" = 1 ]; then
  #          build tests driver bench
  LIMITS=(0 1200 1500 600 600 0)
else
  LIMITS=(0 90 140 120 90 40)
  export TORCH_CUDA_ARCH_LIST=9.0 VIDMEM_EXT_CUDA=1
fi
START=$SECONDS
declare -A RESULT
log() { echo "$*" | tee -a "$OUT/check.log"; }
stage() { echo; log "== stage $1 ($(date +%H:%M:%S), limit ${LIMITS[$1]} s): $2"; }
limited() { local limit="$1"; shift; timeout -k 10 "$limit" "$@"; }
status() { case "$1" in 0) echo ok ;; 124|137) echo "TIMED OUT" ;; *) echo "FAILED (exit $1)" ;; esac; }

# ---------------------------------------------------------------- 1 build
stage 1 "build in place ($([ "$CPU" = 1 ] && echo "CPU run" || echo "TORCH_CUDA_ARCH_LIST=9.0"), $CORES cores)"
if [ -n "$WHEELS" ]; then
  log "peers from $WHEELS (no index, no dependencies):"
  "$PY" -m pip install --no-index --no-deps --find-links "$WHEELS" accelerated-scan fla-core >>"$OUT/check.log" 2>&1 \
    && log "  installed" || log "  not installed (see check.log); the bench reports them as skipped"
fi
if [ "$BUILD" = 1 ]; then
  MAX_JOBS="$CORES" limited "${LIMITS[1]}" "$PY" setup.py build_ext --inplace >>"$OUT/check.log" 2>&1
  RESULT[build]="$(status $?)"
else
  RESULT[build]="skipped (--no-build)"
fi
"$PY" -m vidmem_ext info 2>&1 | tee -a "$OUT/check.log"
log "build: ${RESULT[build]} ($((SECONDS - START)) s)"

# The launch-bounds variant builds in a copy of the checkout, in the background, while stages 2-4 run.
VARIANT=""
if [ "$CPU" = 0 ] && [ "${RESULT[build]}" = ok ]; then
  VARIANT="$(mktemp -d)/vidmem_ext_launch_bounds"
  mkdir -p "$VARIANT"
  (git ls-files -z --cached --others --exclude-standard 2>/dev/null || find . -path ./build -prune -o -type f -print0) \
    | tar --null -T - -cf - | tar -xf - -C "$VARIANT"
  (cd "$VARIANT" && VIDMEM_EXT_BWD_LAUNCH_BOUNDS=1 MAX_JOBS=$((CORES / 2 > 0 ? CORES / 2 : 1)) \
    "$PY" setup.py build_ext --inplace >"$VARIANT/build.log" 2>&1; echo $? >"$VARIANT/build.rc") &
  VARIANT_PID=$!
fi

# ---------------------------------------------------------------- 2 tests
stage 2 "the test suite, cuda marker included"
# The slow CPU-only tests (the CUDA emulator, inductor compiles) are left out: CI's main suite runs
# them, and their single-file builds alone would take most of this stage's time.
limited "${LIMITS[2]}" "$PY" -m pytest -q -p no:cacheprovider -m "cuda or not slow" tests >"$OUT/tests.log" 2>&1
rc=$?
tail -n 3 "$OUT/tests.log"
RESULT[tests]="$(status $rc): $(grep -E '^[=]* ?[0-9]+ (passed|failed)|[0-9]+ (passed|failed|error)' "$OUT/tests.log" | tail -n 1 | tr -d '=' | xargs)"

# ---------------------------------------------------------------- 3 sanitizer
stage 3 "compute-sanitizer over every CUDA kernel path"
if [ "$CPU" = 1 ]; then
  echo "== the driver on the CPU (no sanitizer in a --cpu run)" >"$OUT/sanitizer.log"
  limited "${LIMITS[3]}" "$PY" benchmarks/sanitizer_driver.py --device cpu >>"$OUT/sanitizer.log" 2>&1
  RESULT[sanitizer]="skipped (--cpu); driver on the CPU: $(status $?), $(tail -n 1 "$OUT/sanitizer.log")"
else
  SANITIZER="$(command -v compute-sanitizer || true)"
  for root in "${CUDA_HOME:-}" "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")" /usr/local/cuda; do
    [ -z "$SANITIZER" ] && [ -n "$root" ] && [ -x "$root/bin/compute-sanitizer" ] && SANITIZER="$root/bin/compute-sanitizer"
    [ -z "$SANITIZER" ] && [ -n "$root" ] && [ -x "$root/compute-sanitizer/compute-sanitizer" ] \
      && SANITIZER="$root/compute-sanitizer/compute-sanitizer"
  done
  : >"$OUT/sanitizer.log"
  if [ -z "$SANITIZER" ]; then
    RESULT[sanitizer]="not run: compute-sanitizer not found"
  else
    summary=""
    for tool in memcheck racecheck synccheck; do
      echo "== $tool" >>"$OUT/sanitizer.log"
      limited $((LIMITS[3] / 3)) "$SANITIZER" --tool "$tool" --error-exitcode 0 \
        "$PY" benchmarks/sanitizer_driver.py --device cuda >>"$OUT/sanitizer.log" 2>&1
      rc=$?
      errors="$(sed -n "/^== $tool/,\$p" "$OUT/sanitizer.log" | grep -oE 'ERROR SUMMARY: [0-9]+' | tail -n 1 | grep -oE '[0-9]+$')"
      driver="$(sed -n "/^== $tool/,\$p" "$OUT/sanitizer.log" | grep -E '^driver:' | tail -n 1)"
      if [ -n "$errors" ]; then
        summary+="$tool $errors errors${driver:+ ($driver)}; "
      else
        summary+="$tool: could not attach or did not finish ($(status $rc)); "
      fi
    done
    RESULT[sanitizer]="${summary%; }"
  fi
fi
log "sanitizer: ${RESULT[sanitizer]}"

# ---------------------------------------------------------------- 4 bench
stage 4 "python -m vidmem_ext bench"
if [ "$CPU" = 1 ]; then
  BENCH=(--device cpu --quick)
else
  BENCH=(--device cuda --no-compile --budget $((LIMITS[4] - 10)))  # compiling each case would take the stage
fi
limited "${LIMITS[4]}" "$PY" -m vidmem_ext bench "${BENCH[@]}" --out "$OUT" --no-progress >>"$OUT/check.log" 2>&1
RESULT[bench]="$(status $?)"
log "bench: ${RESULT[bench]}"

# ---------------------------------------------------------------- 5 launch bounds
stage 5 "the __launch_bounds__ variant of the momentum backward"
if [ -z "$VARIANT" ]; then
  RESULT[launch_bounds]="skipped ($([ "$CPU" = 1 ] && echo "--cpu" || echo "no build"))"
else
  wait "$VARIANT_PID"
  cat "$VARIANT/build.log" >>"$OUT/check.log"
  if [ "$(cat "$VARIANT/build.rc")" != 0 ]; then
    RESULT[launch_bounds]="variant build FAILED (see check.log)"
  else
    (cd "$VARIANT" && PYTHONPATH="$VARIANT" limited "${LIMITS[5]}" "$PY" -m vidmem_ext bench --device cuda \
      --ops momentum --impls vidmem_ext --no-compile --out "$VARIANT/out" --no-progress) >>"$OUT/check.log" 2>&1
    rc=$?
    [ -f "$VARIANT/out/bench.json" ] && cp "$VARIANT/out/bench.json" "$OUT/bench_launch_bounds.json"
    RESULT[launch_bounds]="$(status $rc)"
  fi
  rm -rf "$(dirname "$VARIANT")"
fi

# ---------------------------------------------------------------- summary
{
  echo "==================== vidmem_ext gpu_check summary ($([ "$CPU" = 1 ] && echo "--cpu" || echo GPU), $((SECONDS - START)) s)"
  "$PY" - "$OUT" <<'EOF'
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
    lb = os.path.join(out, "bench_launch_bounds.json")
    if os.path.exists(lb):
        def times(rows):
            return {(r["case"], r["dtype"], r["mode"]): r["median_ms"] for r in rows
                    if r["impl"] == "vidmem_ext" and r["mode"] == "fwd+bwd" and r["median_ms"]}
        base, variant = times(data["rows"]), times(json.load(open(lb))["rows"])
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
  echo "files: $(cd "$OUT" && ls | xargs)"
} | tee "$OUT/summary.txt"

failed=0
[[ "${RESULT[build]}" == ok || "${RESULT[build]}" == skipped* ]] || failed=1
[[ "${RESULT[tests]}" == ok* ]] || failed=1
[[ "${RESULT[bench]}" == ok ]] || failed=1
if [ "$CPU" = 1 ]; then
  [[ "${RESULT[sanitizer]}" == *"driver on the CPU: ok"* ]] || failed=1
else
  echo "${RESULT[sanitizer]}" | grep -qE '(memcheck|racecheck|synccheck) [1-9][0-9]* errors' && failed=1
fi
exit "$failed"
