"""The Wan2.1 tasks through generate.py and the one flow core: i2v-14B (CLIP), flf2v-14B, t2i-14B, and
prompt extension with tiny local models."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import generate
from conftest import DATA, run_script
from wan import tasks
from wan.configs import WAN_CONFIGS
from wan.models import Models
from wan.settings import Generation, LoadOptions, Sampling
from wan.tasks.i2v import first_frame_mask, i2v_latent_size

KITTEN = os.path.join(DATA, "kitten-turning-head")
FIRST = os.path.join(KITTEN, "edited_first_frame.png")


@pytest.fixture
def last_frame(tmp_path):
    """A last frame of another size and aspect than the first."""
    path = tmp_path / "last.png"
    Image.fromarray((np.random.default_rng(0).random((40, 100, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


def run(tiny_checkpoint, tmp_path, task, *extra, name="out.mp4", frames="5"):
    out = str(tmp_path / name)
    argv = ["--task", task, "--ckpt_dir", tiny_checkpoint(task), "--size", "64*64", "--frame_num", frames,
            "--sample_steps", "2", "--base_seed", "3", "--save_file", out, "--device", "cpu", *extra]
    assert generate.main(argv) == out
    return out


def test_i2v_14b_gives_the_dit_clip_tokens_of_the_original_image(tiny_checkpoint, tmp_path):
    from wan.utils.video_io import probe_video

    out = run(tiny_checkpoint, tmp_path, "i2v-14B", "--image", FIRST)
    frames, _, width, height = probe_video(out)
    assert frames == 5 and width * height <= 64 * 64
    models = Models.load(WAN_CONFIGS["i2v-14B"], tiny_checkpoint("i2v-14B"), LoadOptions(device="cpu"))
    generation = Generation.from_dict({**tasks.defaults("i2v-14B"), "prompt": "a cat", "image": FIRST,
                                       "size": (64, 64), "frame_num": 5})
    job = tasks.prepare(models, generation)
    assert job.condition.clip_fea.shape[:2] == (1, 257)
    # the tokens are those of the image at its own resolution, not of the resized one
    image = torch.from_numpy(np.array(Image.open(FIRST).convert("RGB"))).permute(2, 0, 1)[:, None] / 127.5 - 1
    torch.testing.assert_close(job.condition.clip_fea, models.encode_images([image]))
    # mask + 16 latent channels, and the same conditioning in both guidance passes (via one velocity field)
    assert job.condition.y.shape[0] == 20 and bool((job.condition.y[:4, 0] == 1).all())


def test_i2v_14b_shifts_480p_sizes_by_three():
    assert tasks.defaults("i2v-14B", "832*480")["sampling"]["shift"] == 3.0
    assert tasks.defaults("i2v-14B", "1280*720")["sampling"]["shift"] == 5.0
    parsed = generate.parse_args(["--task", "i2v-14B", "--size", "832*480"])
    assert parsed.settings["sampling"]["shift"] == 3.0


def test_i2v_size_rule_keeps_the_reference_float_arithmetic():
    # 399360 * (480/832) is 230399.99999999997 in float64: the reference gives 832x464, not 832x480.
    lat_h, lat_w = i2v_latent_size(832, 480, 832 * 480)
    assert (lat_w * 8, lat_h * 8) == (832, 464)
    assert tuple(v * 8 for v in i2v_latent_size(1024, 1024, 1280 * 720)) == (960, 960)


def test_flf2v_with_a_differently_sized_last_frame(tiny_checkpoint, tmp_path, last_frame):
    from wan.utils.video_io import probe_video

    out = run(tiny_checkpoint, tmp_path, "flf2v-14B", "--first_frame", FIRST, "--last_frame", last_frame,
              frames="9")
    assert probe_video(out)[0] == 9
    models = Models.load(WAN_CONFIGS["flf2v-14B"], tiny_checkpoint("flf2v-14B"), LoadOptions(device="cpu"))
    generation = Generation(task="flf2v-14B", prompt="p", first_frame=FIRST, last_frame=last_frame, size=(64, 64),
                            frame_num=9, sampling=Sampling(steps=2))
    job = tasks.prepare(models, generation)
    assert job.condition.clip_fea.shape[0] == 2  # first and last, in that order
    mask = job.condition.y[:4]
    assert bool((mask[:, 0] == 1).all()) and bool((mask[3, -1] == 1).all()) and bool((mask[:3, -1] == 0).all())
    assert bool((mask[:, 1:-1] == 0).all())


@pytest.mark.parametrize("frame_num", [9, 13, 81])
def test_flf2v_mask_is_built_for_any_frame_count(frame_num):
    mask = first_frame_mask(frame_num, 2, 2, last=True)
    assert mask.shape[1] == (frame_num - 1) // 4 + 1
    assert mask[:, -1, 0, 0].tolist() == [0, 0, 0, 1] and mask[:, 0, 0, 0].tolist() == [1, 1, 1, 1]


def test_t2i_writes_one_frame(tiny_checkpoint, tmp_path):
    from wan.utils.video_io import probe_video

    out = run(tiny_checkpoint, tmp_path, "t2i-14B", frames="1")
    assert probe_video(out)[0] == 1


BAD = [
    (["--task", "flf2v-14B", "--first_frame", FIRST], "--last_frame is required for flf2v-14B"),
    (["--task", "t2i-14B", "--frame_num", "5"], "--frame_num must be 1 for t2i-14B"),
    (["--task", "i2v-14B", "--image", "/nonexistent/x.png"], "/nonexistent/x.png"),
    (["--task", "i2v-14B"], "--image is required for i2v-14B"),
    (["--task", "t2v-14B", "--first_frame", FIRST], "--first_frame is not used by t2v-14B"),
    (["--task", "t2v-14B", "--use_prompt_extend", "--prompt_extend_method", "dashscope"],
     "needs network access and a DashScope API key"),
]


@pytest.mark.parametrize("extra,message", BAD)
def test_bad_inputs_are_one_line_errors(tiny_checkpoint, tmp_path, extra, message):
    task = extra[1]
    result = run_script("generate.py", "--ckpt_dir", tiny_checkpoint(task), "--size", "64*64", "--sample_steps", "1",
                        "--save_file", str(tmp_path / "x.mp4"), *extra)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and last.startswith("error:") and message in last, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not os.path.exists(tmp_path / "x.mp4")


def test_missing_clip_file_is_named(tiny_checkpoint, tmp_path):
    import shutil

    ckpt = tmp_path / "partial"
    shutil.copytree(tiny_checkpoint("i2v-14B"), ckpt)
    os.remove(ckpt / WAN_CONFIGS["i2v-14B"].clip_checkpoint)
    result = run_script("generate.py", "--task", "i2v-14B", "--ckpt_dir", str(ckpt), "--image", FIRST, "--size",
                        "64*64", "--frame_num", "5", "--sample_steps", "1", "--save_file", str(tmp_path / "x.mp4"))
    assert result.returncode == 2 and WAN_CONFIGS["i2v-14B"].clip_checkpoint in result.stderr.splitlines()[-1]


def test_a_wan22_i2v_checkpoint_is_refused_for_i2v_14b(tiny_checkpoint, tmp_path):
    result = run_script("generate.py", "--task", "i2v-14B", "--ckpt_dir", tiny_checkpoint("i2v-A14B"), "--image",
                        FIRST, "--size", "64*64", "--frame_num", "5", "--sample_steps", "1", "--save_file",
                        str(tmp_path / "x.mp4"))
    assert result.returncode == 2 and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def extenders(tmp_path_factory):
    from wan.tools.tiny_prompt_extend import write_tiny_prompt_extender

    root = tmp_path_factory.mktemp("extenders")
    return {kind: write_tiny_prompt_extender(kind, str(root / kind), seed=0) or str(root / kind)
            for kind in ("text", "vl")}


def test_prompt_extension_end_to_end_is_seeded_and_saved(tiny_checkpoint, tmp_path, extenders):
    outputs = []
    for name in ("a.mp4", "b.mp4"):
        out = run(tiny_checkpoint, tmp_path, "t2v-14B", "--prompt", "a fox", "--use_prompt_extend",
                  "--prompt_extend_model", extenders["text"], "--prompt_extend_target_lang", "en", name=name)
        outputs.append(json.load(open(os.path.splitext(out)[0] + ".prompt.json")))
    assert outputs[0] == outputs[1] and outputs[0]["original prompt"] == "a fox"
    resolved = open(tmp_path / "a.settings.yaml").read()
    assert "use_prompt_extend: false" in resolved


def test_prompt_extension_sees_the_image(tiny_checkpoint, tmp_path, extenders):
    out = run(tiny_checkpoint, tmp_path, "i2v-14B", "--image", FIRST, "--prompt", "a cat", "--use_prompt_extend",
              "--prompt_extend_model", extenders["vl"])
    assert json.load(open(os.path.splitext(out)[0] + ".prompt.json"))["original prompt"] == "a cat"
