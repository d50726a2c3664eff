"""Package-level behaviour: info is honest, and the import survives a missing compiled part."""

import subprocess
import sys
import textwrap

import pytest
import torch

import vidmem_ext
from vidmem_ext import _backend


def test_info_reports_versions_and_build():
    out = subprocess.run(
        [sys.executable, "-m", "vidmem_ext", "info"], capture_output=True, text=True, check=True
    ).stdout
    assert f"vidmem_ext {vidmem_ext.__version__}" in out
    assert f"torch {torch.__version__}" in out
    assert ("compiled CPU kernels: yes" in out) == _backend.compiled()
    assert ("compiled CUDA kernels: yes" in out) == _backend.cuda_compiled()
    for op, devices in _backend.fallbacks().items():
        line = next(line for line in out.splitlines() if line.strip().startswith(f"{op}:"))
        assert ("fallback" in line) == bool(devices)


def test_fallbacks_agree_with_the_dispatcher():
    for op, devices in _backend.fallbacks().items():
        for kernel in _backend.OP_KERNELS[op]:
            if "cpu" not in devices:
                assert torch._C._dispatch_has_kernel_for_dispatch_key(f"vidmem_ext::{kernel}", "CPU")


def test_import_without_compiled_part():
    # Make `vidmem_ext._C` unimportable in a fresh interpreter and check that the package still imports,
    # that info says so, and that every op is listed as falling back on the CPU.
    code = textwrap.dedent(
        """
        import sys

        class NoCompiledPart:
            def find_spec(self, name, path=None, target=None):
                if name == "vidmem_ext._C":
                    raise ImportError("simulated: vidmem_ext._C was not built")

        sys.meta_path.insert(0, NoCompiledPart())
        import vidmem_ext
        from vidmem_ext import _backend, cli
        assert not _backend.compiled()
        text = "\\n".join(cli.info_lines())
        assert "compiled CPU kernels: no (ImportError: simulated" in text, text
        assert all("cpu" in d for d in _backend.fallbacks().values())
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_importing_after_torch_registers_the_ops_and_token_budget_needs_no_torch():
    code = textwrap.dedent(
        """
        import torch, vidmem_ext
        names = ("temporal_momentum", "temporal_momentum_backward", "dependency_noise_fill_", "dependency_noise_step")
        for name in names:
            getattr(torch.ops.vidmem_ext, name)  # AttributeError if the import did not register it
        x = torch.randn(4, 3)
        torch.testing.assert_close(torch.ops.vidmem_ext.temporal_momentum(x, None, 0.5, 0, None),
                                   vidmem_ext.reference.temporal_momentum_loop(x, 0.5, 0))
        print("ok")
        """
    )
    if not _backend.compiled():
        pytest.skip("no compiled part, no ops to register (test_import_without_compiled_part covers that)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    code = "import sys, vidmem_ext.token_budget; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_lazy_attributes():
    assert vidmem_ext.token_budget.multi_term_memory_patchification is vidmem_ext.multi_term_memory_patchification
    try:
        vidmem_ext.does_not_exist  # noqa: B018
    except AttributeError as exc:
        assert "does_not_exist" in str(exc)
    else:
        raise AssertionError("missing attribute did not raise")


def test_sdist_carries_every_source_a_build_needs(tmp_path):
    # setup.py lists only the sources it compiles on the machine at hand (no .cu files with a CPU-only
    # torch) and never the headers: MANIFEST.in must bring the rest, or a build from the sdist fails.
    import os
    import tarfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        # egg_info into tmp_path as well: the test writes nothing into the source tree
        [
            sys.executable,
            "setup.py",
            "-q",
            "egg_info",
            "-e",
            str(tmp_path),
            "sdist",
            "--formats=gztar",
            "-d",
            str(tmp_path),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (archive,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        shipped = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    wanted = {
        os.path.relpath(os.path.join(d, f), root)
        for d, _, files in os.walk(os.path.join(root, "csrc"))
        for f in files
        if f.endswith((".h", ".cuh", ".inc", ".cu", ".cpp"))
    }
    assert wanted and not wanted - shipped, sorted(wanted - shipped)
    assert any(name.startswith("vidmem_ext/demo_model/") and name.endswith(".safetensors") for name in shipped)
