"""The project's C++ flags keep the shared Philox/Box-Muller math free of FMA contraction.

The math in the shared RNG header rounds every multiply and add on its own, as the CUDA kernels do
with __fmul_rn/__fadd_rn, so that one seed gives the same bits on CPU and GPU. g++ would fuse those
steps into FMAs wherever the target has FMA; setup.py's CXX_FLAGS carry -ffp-contract=off against
that. This test builds a small program over 2^18 Philox groups (2^20 normals, float and double) with
those flags, once as the extension is built and once with -mfma -O3 added, and requires identical
bits. A third build with -mfma and contraction allowed shows that the check can tell the difference.
"""

import ast
import hashlib
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CXX = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
GROUPS = 1 << 18
X86 = os.uname().machine in ("x86_64", "i686")
FMA = ["-mfma"] if X86 else []  # aarch64 always has FMA (and no -mfma flag)

PROGRAM = r"""
#include <cstdio>
#include <cstring>
#include PHILOX_HEADER
using namespace vidmem;

// Writes the raw bits of every float and double normal of GROUPS Philox groups to stdout.
int main() {
  const NormalStream stream = make_normal_stream(0x5EEDBA5Eull, 12, 3, kElementNormals, 5);
  static float floats[4 * GROUPS_COUNT];
  static double doubles[4 * GROUPS_COUNT];
  for (unsigned long long g = 0; g < GROUPS_COUNT; ++g) {
    stream.group<float>(g, floats + 4 * g);
    stream.group<double>(g, doubles + 4 * g);
  }
  std::fwrite(floats, sizeof(float), 4 * GROUPS_COUNT, stdout);
  std::fwrite(doubles, sizeof(double), 4 * GROUPS_COUNT, stdout);
  return 0;
}
"""


def project_flags(name: str = "CXX_FLAGS") -> list[str]:
    """A flag list as setup.py assigns it (read, not imported: importing setup.py would run setup())."""
    with open(os.path.join(ROOT, "setup.py")) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"setup.py assigns no {name} list")


def philox_header() -> str:
    for rel in ("csrc/common/philox.h", "csrc/philox.h"):  # after and before the csrc/ layout move
        if os.path.exists(os.path.join(ROOT, rel)):
            return os.path.join(ROOT, rel)
    raise AssertionError("the shared Philox header is missing")


def cpu_has_fma() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " fma " in f" {line.split(':', 1)[1]} " for line in f)
    except OSError:
        return False


def normals_digest(tmp_path, name: str, flags: list[str]) -> tuple[str, int]:
    header = philox_header()
    src, exe = tmp_path / "normals.cpp", tmp_path / name
    src.write_text(PROGRAM)
    cmd = [CXX, "-std=c++17", *flags, f'-DPHILOX_HEADER="{header}"', f"-DGROUPS_COUNT={GROUPS}ull"]
    cmd += [f"-I{os.path.join(ROOT, 'csrc')}", f"-I{os.path.dirname(header)}", str(src), "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, f"{' '.join(cmd)}\n{build.stderr}"
    out = subprocess.run([str(exe)], check=True, capture_output=True, timeout=120).stdout
    assert len(out) == GROUPS * 4 * (4 + 8)
    return hashlib.sha256(out).hexdigest(), len(out)


@pytest.fixture(scope="module")
def flags():
    if CXX is None or not os.path.basename(CXX).startswith(("g++", "c++")):
        pytest.skip("needs g++ (the compiler the extension is built with)")
    if X86 and not cpu_has_fma():
        pytest.skip("this CPU has no FMA: an -mfma build cannot run here")
    result = project_flags()
    assert "-ffp-contract=off" in result
    return result


def test_project_flags_give_the_same_bits_with_and_without_fma(tmp_path, flags):
    plain = normals_digest(tmp_path, "plain", flags)
    with_fma = normals_digest(tmp_path, "fma", [*flags, *FMA, "-O3"])
    assert plain == with_fma


def test_contraction_would_change_the_bits(tmp_path, flags):
    # The same -mfma build with contraction allowed: the check above is only worth something if
    # fused multiply-adds would show up in these bits.
    plain = normals_digest(tmp_path, "plain", flags)
    contracted = normals_digest(tmp_path, "contracted", [*flags, *FMA, "-O3", "-ffp-contract=fast"])
    assert plain != contracted


# --------------------------------------------------------------------------- nvcc

NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
MOMENTUM_CU = os.path.join(ROOT, "csrc", "temporal_momentum", "temporal_momentum.cu")


def momentum_ptx_fmas(tmp_path, flags: list[str]) -> int:
    """Fused multiply-adds in the PTX of the momentum kernels built with `flags` (sm_90)."""
    ptx = tmp_path / "momentum.ptx"
    cmd = [NVCC, "-std=c++17", *flags, "-arch=sm_90", f"-I{os.path.join(ROOT, 'csrc')}", "-ptx", MOMENTUM_CU]
    build = subprocess.run([*cmd, "-o", str(ptx)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, f"{' '.join(cmd)}\n{build.stderr[-2000:]}"
    return ptx.read_text().count("fma.rn.")


@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
def test_nvcc_flags_keep_the_momentum_kernels_free_of_fma(tmp_path):
    # The momentum kernels write a * b + c in plain C++ (shared with the CPU kernels through
    # temporal_momentum.h); nvcc contracts that into FMAs unless told not to, and the GPU's bits then
    # differ from the CPU's. (The noise kernels round each step with __fmul_rn/__fadd_rn; their PTX
    # keeps the FMAs inside libdevice's double exp and log, which no flag changes.)
    flags = project_flags("NVCC_FLAGS")
    assert "-fmad=false" in flags
    assert momentum_ptx_fmas(tmp_path, flags) == 0
    # and the check can tell: the same build with contraction allowed has them
    assert momentum_ptx_fmas(tmp_path, [f for f in flags if f != "-fmad=false"]) > 0
