"""The shared __host__ __device__ RNG header csrc/common/philox.h, compiled as plain C++.

- Philox4x32-10 against the Random123 known-answer vectors (kat_vectors: zero, all-ones and pi
  counters and keys).
- The branch-free float math of the normal transform (log, sincos of 2 pi t, sqrt) and the weight
  exp of csrc/dependency_noise/dependency_noise.h against libm, on dense samples of the inputs the kernels give them.
"""

import json
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CXX = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")

PROGRAM = r"""
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include "dependency_noise/dependency_noise.h"
using namespace vidmem;

static int ulp_distance(float a, float b) {
  const long long ia = float_to_bits(a) & 0x80000000u ? -(long long)(float_to_bits(a) & 0x7FFFFFFFu)
                                                      : (long long)float_to_bits(a);
  const long long ib = float_to_bits(b) & 0x80000000u ? -(long long)(float_to_bits(b) & 0x7FFFFFFFu)
                                                      : (long long)float_to_bits(b);
  return (int)std::min<long long>(ia > ib ? ia - ib : ib - ia, 1 << 30);
}

int main() {
  const PhiloxCounter counters[3] = {{{0u, 0u, 0u, 0u}},
                                     {{0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu}},
                                     {{0x243F6A88u, 0x85A308D3u, 0x13198A2Eu, 0x03707344u}}};
  const uint32_t keys[3][2] = {{0u, 0u}, {0xFFFFFFFFu, 0xFFFFFFFFu}, {0xA4093822u, 0x299F31D0u}};
  std::printf("{\"kat\": [");
  for (int i = 0; i < 3; ++i) {
    const PhiloxCounter out = philox4x32_10(counters[i], keys[i][0], keys[i][1]);
    std::printf("%s[%u, %u, %u, %u]", i ? ", " : "", out.x[0], out.x[1], out.x[2], out.x[3]);
  }
  std::printf("], ");

  // log on u = k / 2^24, k = 1 .. 2^24 (every uniform the float transform makes), in steps of 7.
  int log_ulp = 0;
  for (uint32_t k = 1; k <= (1u << 24); k += 7) {
    const float u = (float)k / 16777216.0f;
    if (u == 1.0f) continue;
    log_ulp = std::max(log_ulp, ulp_distance(log_unit_float(u), (float)std::log((double)u)));
  }
  const float log_at_one = log_unit_float(1.0f);
  // cos, sin of 2 pi t on t = k / 2^24 in steps of 5: absolute error (values in [-1, 1]).
  double sincos_abs = 0.0;
  for (uint32_t k = 1; k <= (1u << 24); k += 5) {
    const float t = (float)k / 16777216.0f;
    float c, s;
    sincos_turns_float(t, c, s);
    const double angle = 6.283185307179586 * (double)t;
    sincos_abs = std::max(sincos_abs, std::max(std::fabs(c - std::cos(angle)), std::fabs(s - std::sin(angle))));
  }
  // sqrt on [1e-8, 40] (the radius argument -2 log u lies in {0} and [1.19e-7, 33.3]).
  int sqrt_ulp = 0;
  for (uint32_t b = float_to_bits(1e-8f); b <= float_to_bits(40.0f); b += 97) {
    const float t = bits_to_float(b);
    sqrt_ulp = std::max(sqrt_ulp, ulp_distance(sqrt_nonnegative_float(t), (float)std::sqrt((double)t)));
  }
  // exp on [-87, 88] (the weights exp(p)); the argument is clamped to that range.
  int exp_ulp = 0;
  for (uint32_t b = 0; b < 0x7F800000u; b += 211) {
    for (int sign = 0; sign < 2; ++sign) {
      const float x = sign ? -bits_to_float(b) : bits_to_float(b);
      if (x < -87.0f || x > 88.0f) continue;
      exp_ulp = std::max(exp_ulp, ulp_distance(exp_acc(x), (float)std::exp((double)x)));
    }
  }
  // Box-Muller extremes: the smallest uniform gives the largest radius, u = 1 gives 0.
  float n1, n2;
  box_muller(0u, 0u, n1, n2);
  const float largest = n1;
  box_muller(0xFFFFFFFFu, 0u, n1, n2);
  std::printf("\"log_ulp\": %d, \"log_at_one\": %g, \"sincos_abs\": %g, \"sqrt_ulp\": %d, \"sqrt_zero\": %g, "
              "\"exp_ulp\": %d, \"exp_clamped_high\": %.9g, \"exp_keeps_nan\": %d, \"largest_normal\": %.9g, "
              "\"normal_at_u1_one\": %g}\n",
              log_ulp, log_at_one, sincos_abs, sqrt_ulp, sqrt_nonnegative_float(0.0f), exp_ulp, exp_acc(1000.0f),
              std::isnan(exp_acc(NAN)) ? 1 : 0, largest, n1);
  return 0;
}
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    if CXX is None:
        pytest.skip("no C++ compiler found")
    tmp = tmp_path_factory.mktemp("philox")
    src, exe = tmp / "check.cpp", tmp / "check"
    src.write_text(PROGRAM)
    # -O2 without -ffast-math, as the extension is built; -ffp-contract=off so the x86 host compiler
    # does not fuse multiply-adds that the CPU kernels (built in ISO mode) do not fuse either.
    cmd = [CXX, "-std=c++17", "-O2", "-ffp-contract=off", f"-I{os.path.join(ROOT, 'csrc')}", str(src), "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def test_philox_known_answers(results):
    # Random123 kat_vectors, "philox4x32 10" lines: counter, key -> output.
    assert results["kat"] == [
        [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8],
        [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD],
        [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
    ]


def test_float_math_against_libm(results):
    assert results["log_ulp"] <= 1 and results["log_at_one"] == 0.0
    assert results["sincos_abs"] <= 2e-7
    assert results["sqrt_ulp"] <= 1 and results["sqrt_zero"] == 0.0
    assert results["exp_ulp"] <= 1
    assert results["exp_clamped_high"] == pytest.approx(1.6516363e38, rel=1e-6)  # exp(88): never inf
    assert results["exp_keeps_nan"] == 1


def test_box_muller_extremes(results):
    # u1 = 2^-24 (word 0), angle 2 pi * 2^-24: radius sqrt(2 * 24 * log 2) = 5.768...
    assert results["largest_normal"] == pytest.approx(5.7680, abs=1e-3)
    assert results["normal_at_u1_one"] == 0.0
