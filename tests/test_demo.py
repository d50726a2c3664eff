"""`python -m vidmem_ext demo`: the files it writes, its output, its progress bar and its argument checks."""

import dataclasses
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

pytest.importorskip("diffusers", reason="the diffusers extra is not installed")
from PIL import Image  # noqa: E402

from vidmem_ext import cli, demo  # noqa: E402
from vidmem_ext.demo_model import Scene, render  # noqa: E402

FILES = ("noise_correlation.png", "momentum_weights.png", "frames.png", "frames.gif", "overview.png", "summary.json")
SETTING_NAMES = [name for name, _, _ in demo.SETTINGS]


def _check_outputs(folder, frames: int, stdout: str):
    for name in FILES:
        path = os.path.join(folder, name)
        assert os.path.getsize(path) > 1000, name
        assert path in stdout  # the closing summary says where each file went
        if name.endswith(".json"):
            continue
        with Image.open(path) as image:
            if name.endswith(".gif"):
                assert image.n_frames == frames
            colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colours is None or len(colours) > 20, f"{name} looks blank"
    assert "token budget" in stdout and "3926" in stdout  # FramePack-like history: 416 + 390 + 3120 tokens
    for name in SETTING_NAMES:
        assert name in stdout  # the ablation table
    summary = json.loads(open(os.path.join(folder, "summary.json")).read())
    assert [s["name"] for s in summary["settings"]] == SETTING_NAMES and summary["frames"] == frames
    return summary


def test_demo_writes_every_file_and_restores_threads(tmp_path, capsys):
    threads = torch.get_num_threads()
    assert cli.main(["demo", "--out", str(tmp_path), "--frames", "3", "--steps", "2"]) == 0
    out, err = capsys.readouterr()
    summary = _check_outputs(str(tmp_path), 3, out)
    assert summary["prompts"] == list(demo.DEMO_PROMPTS) and "demo model" in summary["model"]
    for setting in summary["settings"]:  # the demo model's pictures are measured by the detector
        for key in ("same_as_frame0", "frame0_prompt_accuracy", "mean_abs_frame_diff", "frame_correlation"):
            assert setting[key] is not None and math.isfinite(setting[key]), (setting["name"], key)
        assert 0 <= setting["same_as_frame0"] <= 1 and 0 <= setting["frame0_prompt_accuracy"] <= 1
    assert "demo:" in err and "9/9" in err  # the progress bar (tqdm) on stderr
    assert "Loading" not in err  # diffusers' own loading bars are kept out of it
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
    summary = _check_outputs(str(out_dir), 2, out)
    assert str(model) in out and summary["prompts"] == ["a cat"]
    for setting in summary["settings"]:  # the detector only knows the demo model's scenes
        assert setting["same_as_frame0"] is None and setting["frame0_prompt_accuracy"] is None
        assert setting["mean_abs_frame_diff"] > 0


def _video(scenes):
    return [Image.fromarray(render(s)) for s in scenes]


def test_measure_on_known_videos():
    still = Scene("red", "circle", "blue", 6.0, 12.0, 14.0)
    moving = [dataclasses.replace(still, cx=12.0 + 2 * i) for i in range(4)]  # 2 px per frame to the right
    changing = [still, dataclasses.replace(still, shape="square"), dataclasses.replace(still, colour="green"), still]
    prompts = ["a red circle on a blue background"] * 3
    result = demo._measure([_video([still] * 4), _video(moving), _video(changing)], prompts, with_detector=True)
    assert result["same_as_frame0"] == pytest.approx((3 + 3 + 1) / 9)
    assert result["centre_jitter_px"] == pytest.approx((0 * 3 + 2 * 3 + 0 * 3) / 9, abs=0.15)
    assert result["frame0_prompt_accuracy"] == 1.0
    still_only = demo._measure([_video([still] * 4)], prompts[:1], with_detector=True)
    assert still_only["mean_abs_frame_diff"] == 0.0 and still_only["centre_jitter_px"] == 0.0
    wrong = demo._measure([_video([still] * 2)], ["a green square on a blue background"], with_detector=True)
    assert wrong["frame0_prompt_accuracy"] == 0.0
    plain = demo._measure([_video([still] * 2)], ["anything"], with_detector=False)
    assert plain["same_as_frame0"] is None and plain["mean_abs_frame_diff"] == 0.0


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


def _proc_is_unwritable():
    try:
        with open("/proc/vidmem_ext_probe", "w"):
            return False
    except OSError:
        return True


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--model", "/no/such/folder", "--prompt", "x"], "--model /no/such/folder: no such directory"),
        (["--model", "{tmp}", "--prompt", "x"], "no model_index.json"),
        (["--model", "{tmp_with_index}"], "--model needs --prompt"),
        (["--frames", "1"], r"--frames must be in \[2, 64\]"),
        (["--frames", str(10**9)], r"--frames must be in \[2, 64\]"),
        (["--momentum", "1.5"], r"--momentum must be in \[0, 1\]"),
        (["--momentum", "nan"], r"--momentum must be in \[0, 1\]"),
        (["--lambda", "-1"], r"--lambda must be in \[0, 10\]"),
        (["--lambda", "inf"], r"--lambda must be in \[0, 10\]"),
        (["--lambda", "nan"], r"--lambda must be in \[0, 10\]"),
        (["--lambda", "11"], r"--lambda must be in \[0, 10\]"),
        (["--device", "cpu"], "--device is for --model"),
        (["--model", "{tmp_with_index}", "--prompt", "x", "--device", "tpu"], "--device tpu: not a torch device"),
        (["--model", "{tmp_with_index}", "--prompt", "x", "--device", "meta"], "--device meta: must be cpu or cuda"),
        (["--model", "{tmp_with_index}", "--prompt", "x", "--device", "cuda:99"], "no such CUDA device"),
        (["--steps", "0"], r"--steps must be in \[1, "),
        (["--steps", str(10**12)], r"--steps must be in \[1, "),
        (["--seed", str(2**70)], r"--seed must be in \[0, 2\*\*63 - 1\]"),
        (["--seed", "-1"], r"--seed must be in \[0, 2\*\*63 - 1\]"),
        (["--guidance", "inf"], r"--guidance must be a finite number in \[0, 100\]"),
        (["--threads", "0"], r"--threads must be in \[1, "),
        (["--prompt", "a fox in the snow"], "the demo model knows prompts like"),
        (["--prompt", "a red circle on a red background"], "the demo model knows prompts like"),
        (["--prompt", " "], "--prompt must not be empty"),
        (["--out", "{file}"], "exists and is not a folder"),
        (["--out", "{file}/sub/dir"], "is a file, not a folder"),
        (["--out", ""], "--out must not be empty"),
    ],
)
def test_bad_arguments_are_reported(tmp_path, capsys, extra, message):
    with_index = tmp_path / "with_index"
    with_index.mkdir()
    (with_index / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    file = tmp_path / "file"
    file.write_text("keep me")
    extra = [e.format(tmp=tmp_path, tmp_with_index=with_index, file=file) for e in extra]
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--out", str(tmp_path / "out"), *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("usage: ") or "error: " in err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()  # nothing was run
    assert file.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["file", "with_index"]


def test_unwritable_out_is_refused_before_any_work(tmp_path, capsys):
    if sys.platform.startswith("linux") and _proc_is_unwritable():
        target = "/proc/vidmem_ext_demo_out"  # nobody, root included, can create files in /proc
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        if os.access(locked, os.W_OK):
            pytest.skip("no unwritable folder available to this user")
        target = str(locked / "out")
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--out", target])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "cannot write in" in err and "Traceback" not in err


def test_bad_arguments_from_the_command_line_print_one_error_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vidmem_ext", "demo", "--out", str(tmp_path / "o"), "--seed", str(2**70)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("python -m vidmem_ext demo: error: --seed must be in")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_demo_command_line_default_run(tmp_path):
    # Its run time is the README's figure (about 12 s on 2 cores), measured, not asserted here.
    result = subprocess.run(
        [sys.executable, "-m", "vidmem_ext", "demo", "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    summary = _check_outputs(str(tmp_path), 8, result.stdout)
    assert len(summary["settings"]) == 4
