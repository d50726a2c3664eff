"""The demo's text-to-image model: scenes, the detector, the shipped weights, their quality, and training."""

import fnmatch
import json
import os
import re

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers", reason="the diffusers extra is not installed")
from PIL import Image, ImageDraw  # noqa: E402

from vidmem_ext import cli, demo_model  # noqa: E402
from vidmem_ext.demo_model import COLOURS, SHAPES, Scene, detect, parse_prompt, render  # noqa: E402

SHIPPED = demo_model.DEFAULT_MODEL_DIR
QUALITY_PROMPTS = demo_model.EVAL_PROMPTS  # 8 prompts: every colour as object and background, every shape


@pytest.fixture(scope="module")
def shipped_pipe():
    from diffusers import StableDiffusionPipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pipe = StableDiffusionPipeline.from_pretrained(SHIPPED, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    yield pipe
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------- scenes and detector


def test_prompts_parse_and_round_trip():
    assert parse_prompt("a red circle on a blue background") == ("red", "circle", "blue")
    assert parse_prompt("A Yellow Triangle on a black background") == ("yellow", "triangle", "black")
    for bad in (
        "a red circle",
        "a red circle on a red background",
        "a pink circle on a blue background",
        "a red circle on a blue",  # not the captions' form: the model never saw it
        "a red circle on a blue backdrop",
        "",
    ):
        assert parse_prompt(bad) is None, bad
    scene = Scene("green", "square", "white", 6.0, 12.0, 20.0)
    assert parse_prompt(scene.prompt) == ("green", "square", "white")


def test_the_detector_reads_rendered_scenes():
    rng = np.random.default_rng(7)
    for _ in range(150):
        scene = demo_model.random_scene(rng)
        found = detect(render(scene))
        assert (found.colour, found.shape, found.background) == (scene.colour, scene.shape, scene.background), scene
        cx, cy = found.centre
        # the triangle's centroid sits a third of its height below its box centre
        expected_cy = scene.cy + (scene.radius / 3 if scene.shape == "triangle" else 0.0)
        assert abs(cx - (scene.cx - 0.5)) < 0.8 and abs(cy - (expected_cy - 0.5)) < 0.8, (scene, found.centre)


def test_the_detector_on_a_plain_picture_and_bad_input():
    plain = np.full((32, 32, 3), COLOURS["blue"], dtype=np.uint8)
    found = detect(plain)
    assert found.shape is None and found.colour is None and found.centre is None and found.background == "blue"
    assert detect(Image.fromarray(plain)).background == "blue"
    with pytest.raises(ValueError, match="image must be RGB"):
        detect(np.zeros((32, 32)))


def test_the_tokenizer_spells_each_prompt_word_as_one_token(shipped_pipe):
    for word in demo_model.PROMPT_WORDS:
        assert len(shipped_pipe.tokenizer.tokenize(word)) == 1, word
    ids = shipped_pipe.tokenizer("a red circle on a blue background").input_ids
    assert len(ids) == 6 + 3  # start, six words, "background", end


def test_the_tokenizer_files_for_older_transformers_agree_with_tokenizer_json(shipped_pipe):
    # Older transformers load CLIPTokenizer from vocab.json + merges.txt only: they must give the same ids.
    from transformers import CLIPTokenizer

    folder = os.path.join(SHIPPED, "tokenizer")
    from_bpe_files = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"))
    for prompt in [*QUALITY_PROMPTS, "a purple fox", ""]:
        assert from_bpe_files(prompt).input_ids == shipped_pipe.tokenizer(prompt).input_ids, prompt


# ----------------------------------------------------------------------------------------------- the shipped weights


def test_shipped_weights_load_offline_with_the_expected_config(shipped_pipe):
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    assert isinstance(shipped_pipe, StableDiffusionPipeline)
    assert isinstance(shipped_pipe.unet, UNet2DConditionModel) and isinstance(shipped_pipe.vae, AutoencoderKL)
    assert isinstance(shipped_pipe.text_encoder, CLIPTextModel)
    assert isinstance(shipped_pipe.scheduler, DPMSolverMultistepScheduler)
    unet, vae, text = shipped_pipe.unet.config, shipped_pipe.vae.config, shipped_pipe.text_encoder.config
    assert (unet.sample_size, unet.in_channels, unet.out_channels) == (8, 4, 4)
    assert tuple(unet.block_out_channels) == (32, 64)
    assert unet.cross_attention_dim == text.hidden_size == 64
    assert (vae.sample_size, vae.latent_channels, shipped_pipe.vae_scale_factor) == (32, 4, 4)
    assert 0.1 < vae.scaling_factor < 10  # set from the trained latents' spread, not diffusers' default 0.18215
    assert vae.scaling_factor != 0.18215
    assert text.vocab_size == len(shipped_pipe.tokenizer) and text.max_position_embeddings == 16
    assert shipped_pipe.unet.dtype == torch.float32
    report = json.loads(open(os.path.join(SHIPPED, "training.json")).read())
    assert report["detector_hit_rates"]["colour"] >= 0.8 and report["detector_hit_rates"]["shape"] >= 0.6


def test_shipped_weights_are_small_and_all_are_package_data():
    files = [os.path.relpath(os.path.join(d, f), SHIPPED) for d, _, fs in os.walk(SHIPPED) for f in fs]
    weights = [f for f in files if f.endswith(".safetensors")]
    assert sorted(os.path.dirname(w) for w in weights) == ["text_encoder", "unet", "vae"]
    assert sum(os.path.getsize(os.path.join(SHIPPED, f)) for f in files) <= 8 * 2**20
    setup = open(os.path.join(os.path.dirname(demo_model.__file__), "..", "setup.py")).read()
    patterns = [p.removeprefix("demo_model/") for p in re.findall(r'"(demo_model/[^"]+)"', setup)]
    assert patterns
    missing = [f for f in files if not any(fnmatch.fnmatch(f, p) and f.count("/") == p.count("/") for p in patterns)]
    assert not missing, f"files an installed package would lack (setup.py package_data): {missing}"


def _own_reading(image: Image.Image):
    """An independent reading: object colour from the pixels unlike the corners, shape by template overlap."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    corners = np.stack([pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1]])
    background = np.median(corners, axis=0)
    far = np.linalg.norm(pixels - background, axis=-1) > 100
    if far.sum() < 8:
        return None, None
    names = list(COLOURS)
    mean = pixels[far].mean(0)
    colour = names[int(np.argmin([np.linalg.norm(mean - np.array(COLOURS[n])) for n in names]))]
    ys, xs = np.nonzero(far)
    cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    r = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) / 2
    best, best_iou = None, -1.0
    for shape in SHAPES:
        template = Image.new("L", (32, 32), 0)
        draw = ImageDraw.Draw(template)
        if shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=1)
        elif shape == "square":
            draw.rectangle((cx - r, cy - r, cx + r - 1, cy + r - 1), fill=1)
        else:
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=1)
        mask = np.asarray(template, dtype=bool)
        iou = (mask & far).sum() / (mask | far).sum()
        if iou > best_iou:
            best, best_iou = shape, iou
    return colour, best


def test_own_reading_agrees_with_rendered_scenes():
    rng = np.random.default_rng(3)
    scenes = [demo_model.random_scene(rng) for _ in range(60)]
    readings = [_own_reading(Image.fromarray(render(s))) for s in scenes]
    assert sum(r == (s.colour, s.shape) for r, s in zip(readings, scenes)) >= 57


def test_shipped_model_draws_the_prompted_colour_and_shape(shipped_pipe):
    rates, images = demo_model.score_prompts(shipped_pipe, QUALITY_PROMPTS, per_prompt=4, seed=1234)
    assert len(images) == 32
    assert rates["colour"] >= 0.8, rates
    assert rates["shape"] >= 0.6, rates
    own = [_own_reading(image) for image in images]
    wanted = [parse_prompt(p)[:2] for p in QUALITY_PROMPTS for _ in range(4)]
    own_colour = np.mean([o[0] == w[0] for o, w in zip(own, wanted)])
    own_shape = np.mean([o[1] == w[1] for o, w in zip(own, wanted)])
    assert own_colour >= 0.75 and own_shape >= 0.5, (own_colour, own_shape)


# ----------------------------------------------------------------------------------------------- training


def _tiny_config(seed=0):
    return demo_model.TrainConfig(
        seed=seed, dataset_size=16, vae_steps=2, vae_batch=4, unet_steps=3, unet_batch=4, evaluate=False
    )


def test_training_smoke_is_deterministic_and_saves_a_loadable_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline

    threads = torch.get_num_threads()
    report = demo_model.train(str(tmp_path / "a"), _tiny_config(), progress=False)
    demo_model.train(str(tmp_path / "b"), _tiny_config(), progress=False)
    demo_model.train(str(tmp_path / "c"), _tiny_config(seed=1), progress=False)
    assert torch.get_num_threads() == threads
    assert report["config"]["unet_steps"] == 3 and report["train_seconds"] > 0
    assert os.path.getsize(tmp_path / "a" / "loss_curve.png") > 1000
    assert all((tmp_path / "a" / "tokenizer" / name).exists() for name in ("vocab.json", "merges.txt"))
    assert json.loads((tmp_path / "a" / "training.json").read_text())["vae_final_loss"] > 0
    pipes = [StableDiffusionPipeline.from_pretrained(str(tmp_path / k), local_files_only=True) for k in "abc"]
    a, b, c = (p.unet.state_dict() for p in pipes)
    assert all(torch.equal(a[k], b[k]) for k in a), "the same seed gave different weights"
    assert not all(torch.equal(a[k], c[k]) for k in a), "another seed gave the same weights"
    initial = demo_model.build_pipeline(0).unet.state_dict()
    assert not all(torch.equal(a[k], initial[k]) for k in a), "training changed nothing"
    image = pipes[0]("a red circle on a blue background", num_inference_steps=1, output_type="np").images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


def test_train_command_smoke(tmp_path, capsys):
    out = tmp_path / "model"
    argv = ["train-demo-model", "--out", str(out), "--vae-steps", "1", "--unet-steps", "1", "--dataset-size", "8"]
    assert cli.main([*argv, "--no-eval"]) == 0
    assert (out / "model_index.json").exists() and (out / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert "saved to" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--out", "{file}"], "exists and is not a folder"),
        (["--out", "{file}/sub"], "is a file, not a folder"),
        (["--seed", "-1"], r"--seed must be in \[0, "),
        (["--seed", str(2**70)], r"--seed must be in \[0, "),
        (["--threads", "0"], r"--threads must be in \[1, "),
        (["--unet-steps", str(10**9)], r"--unet-steps must be in \[0, "),
        (["--vae-steps", "20001"], r"--vae-steps must be in \[0, 20000\]"),
        (["--dataset-size", "0"], r"--dataset-size must be in \[1, "),
        (["--dataset-size", "100001"], r"--dataset-size must be in \[1, 100000\]"),
    ],
)
def test_train_command_bad_arguments(tmp_path, capsys, extra, message):
    file = tmp_path / "file"
    file.write_text("x")
    argv = ["train-demo-model", "--out", str(tmp_path / "out"), *(e.format(file=file) for e in extra)]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err
    assert not (tmp_path / "out").exists() and file.read_text() == "x"
