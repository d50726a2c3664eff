"""`python -m vidmem_ext demo`: the files it writes, its output, its progress bar and its argument checks."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

pytest.importorskip("diffusers", reason="the diffusers extra is not installed")
from PIL import Image  # noqa: E402

from vidmem_ext import cli, demo  # noqa: E402

FILES = ("noise_correlation.png", "momentum_weights.png", "frames.png", "frames.gif", "overview.png")


def _check_outputs(folder, frames: int, stdout: str):
    for name in FILES:
        path = os.path.join(folder, name)
        assert os.path.getsize(path) > 1000, name
        assert path in stdout  # the closing summary says where each file went
        with Image.open(path) as image:
            if name.endswith(".gif"):
                assert image.n_frames == frames
            colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colours is None or len(colours) > 20, f"{name} looks blank"
    assert "token budget" in stdout and "3926" in stdout  # FramePack-like history: 416 + 390 + 3120 tokens


def test_demo_writes_every_file_and_restores_threads(tmp_path, capsys):
    threads = torch.get_num_threads()
    assert cli.main(["demo", "--out", str(tmp_path), "--frames", "3", "--steps", "1"]) == 0
    out, err = capsys.readouterr()
    _check_outputs(str(tmp_path), 3, out)
    assert "video frame-to-frame correlation: momentum 0 ->" in out
    assert "demo:" in err and "7/7" in err  # the progress bar (tqdm) on stderr
    assert torch.get_num_threads() == threads


def test_demo_with_a_local_model_folder(tmp_path, capsys):
    # A pipeline saved to disk stands in for a real Stable Diffusion folder: the --model path loads
    # it with from_pretrained(local_files_only=True), exactly as it would load a real one.
    from vidmem_ext.pipelines import tiny_stable_diffusion

    model = tmp_path / "model"
    tiny_stable_diffusion(seed=1).save_pretrained(str(model))
    out_dir = tmp_path / "out"
    argv = ["demo", "--out", str(out_dir), "--model", str(model), "--prompt", "a cat", "--frames", "2", "--steps", "1"]
    assert cli.main([*argv, "--device", "cpu", "--threads", "1"]) == 0
    out, _ = capsys.readouterr()
    _check_outputs(str(out_dir), 2, out)
    assert str(model) in out


def test_text_progress_bar_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # makes `import tqdm...` raise ImportError
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    steps = demo._Steps(["one", "two"])
    steps.write("hello")
    steps.advance()
    steps.advance()
    steps.close()
    out, err = capsys.readouterr()
    assert "hello" in out
    assert "[....................] 0/2 one" in err and "[##########..........] 1/2 two" in err and "2/2 done" in err


def test_without_the_diffusers_extra_the_demo_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` raise ImportError
    assert cli.main(["demo", "--out", str(tmp_path / "out")]) == 1
    assert 'pip install -e ".[diffusers]"' in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--model", "/no/such/folder", "--prompt", "x"], "--model /no/such/folder: no such directory"),
        (["--model", "{tmp}", "--prompt", "x"], "no model_index.json"),
        (["--model", "{tmp_with_index}"], "--model needs --prompt"),
        (["--frames", "1"], "--frames must be >= 2"),
        (["--momentum", "1.5"], r"--momentum must be in \[0, 1\]"),
        (["--lambda", "-1"], "--lambda must be >= 0"),
        (["--steps", "0"], "--steps must be >= 1"),
    ],
)
def test_bad_arguments_are_reported(tmp_path, capsys, extra, message):
    with_index = tmp_path / "with_index"
    with_index.mkdir()
    (with_index / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    extra = [e.format(tmp=tmp_path, tmp_with_index=with_index) for e in extra]
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--out", str(tmp_path / "out"), *extra])
    assert exc.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()  # nothing was run


@pytest.mark.slow
def test_demo_command_line_default_run(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vidmem_ext", "demo", "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    _check_outputs(str(tmp_path), 8, result.stdout)
