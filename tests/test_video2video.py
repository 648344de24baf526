"""Video continuation (v2v-5B, v2v-14B) and the chained generate_continuous.py, on tiny checkpoints and
a tiny InternVL captioner, with a real clip."""
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import generate
from conftest import DATA, run_script
from wan import WanV2V, WanV2V5B, tasks
from wan.configs import WAN_CONFIGS
from wan.errors import WanInputError
from wan.modules.vlm import VideoCaptioner
from wan.runner import Runner
from wan.settings import Generation
from wan.tasks.continuation import PROMPTS_LOG, STITCHED_VIDEO, combine_prompt, continuation_inputs
from wan.tasks.ti2v import fit_image, image_size
from wan.utils.video_io import probe_video, read_video, to_model_range, write_video

RABBIT = os.path.join(DATA, "rabbit-figurine", "source.mp4")
TINY = dict(frame_num=5, sampling_steps=2, seed=3)


@pytest.fixture
def internvl(tiny_vlm):
    return tiny_vlm("internvl")


@pytest.fixture(scope="module")
def rabbit():
    frames, _ = read_video(RABBIT)
    return frames


def expected_prompt(internvl, frames, prefix):
    caption = VideoCaptioner(internvl).caption(frames)
    assert caption
    return combine_prompt(prefix, caption)


def v2v(task, prompt, **values):
    return Generation.from_dict({**tasks.defaults(task), "prompt": prompt, "video": RABBIT, "size": (64, 64),
                                 "frame_num": TINY["frame_num"], "seed": TINY["seed"],
                                 "sampling": {**tasks.defaults(task)["sampling"], "steps": TINY["sampling_steps"]},
                                 **values})


def test_v2v_5b_starts_from_the_source_last_frame_and_uses_the_caption(tiny_checkpoint, internvl, rabbit):
    pipe = WanV2V5B(WAN_CONFIGS["v2v-5B"], tiny_checkpoint("ti2v-5B"), device="cpu", vlm_path=internvl)
    models = pipe.models
    image, prompt = continuation_inputs(models, RABBIT)
    assert torch.equal(torch.from_numpy(np.array(image)), rabbit[-1])
    assert prompt == expected_prompt(internvl, rabbit, None)

    video, used = pipe.v2v(RABBIT, "continue video", size=(64, 64), max_area=64 * 64, frame_num=5,
                           sampling_steps=2, seed=3)
    assert used == expected_prompt(internvl, rabbit, "continue video")
    # In latent space the first frame is the encoded last source frame, exactly.
    width, height = image_size(models.config, image, 64 * 64)
    first_latent = models.encode_frames(fit_image(image, (width, height)))
    job = tasks.prepare(models, v2v("v2v-5B", "continue video"))
    assert job.record["prompt"] == used and job.record["caption_prefix"] == "continue video"
    latent = Runner(models).denoise(job)
    assert torch.equal(latent[:, :1], first_latent)
    # In pixels it is that latent decoded: the source's last frame up to the VAE round trip.
    assert video.shape == (3, 5, height, width)
    torch.testing.assert_close(video[:, 0], models.decode(first_latent)[:, 0], atol=1e-4, rtol=0)


def test_v2v_14b_conditions_on_the_source_last_frame(tiny_checkpoint, internvl, rabbit):
    pipe = WanV2V(WAN_CONFIGS["v2v-14B"], tiny_checkpoint("i2v-A14B"), device="cpu", vlm_path=internvl)
    models = pipe.models
    job = tasks.prepare(models, v2v("v2v-14B", "continue video"))
    width, height = job.record["output_size"]
    last = F.interpolate(to_model_range(rabbit[-1:])[:, 0][None], size=(height, width), mode="bicubic")[0]
    encoded_last = models.encode_video(last[:, None])
    # the image latent channels of the I2V condition hold the encoded last source frame (the VAE is causal)
    torch.testing.assert_close(job.condition.y[4:, :1], encoded_last, atol=1e-5, rtol=0)
    video, prompt = pipe.v2v(RABBIT, "continue video", max_area=64 * 64, **TINY)
    assert prompt == job.record["prompt"] == expected_prompt(internvl, rabbit, "continue video")
    assert video.shape == (3, 5, height, width)


def test_without_captioner_the_prompt_is_used_as_is_and_required(tiny_checkpoint):
    pipe = WanV2V5B(WAN_CONFIGS["v2v-5B"], tiny_checkpoint("ti2v-5B"), device="cpu", load=("vae",))
    assert continuation_inputs(pipe.models, RABBIT, "a rabbit")[1] == "a rabbit"
    with pytest.raises(WanInputError, match="prompt is required to continue .* without a captioner"):
        continuation_inputs(pipe.models, RABBIT)


def test_generate_py_v2v(tiny_checkpoint, internvl, tmp_path):
    out = str(tmp_path / "v2v.mp4")
    argv = ["--task", "v2v-14B", "--ckpt_dir", tiny_checkpoint("i2v-A14B"), "--video", RABBIT, "--vlm_path",
            internvl, "--size", "64*64", "--frame_num", "5", "--sample_steps", "2", "--save_file", out,
            "--device", "cpu"]
    assert generate.main(argv) == out
    assert probe_video(out)[0] == 5


def short_clip(tmp_path):
    path = tmp_path / "short.mp4"
    write_video(read_video(RABBIT, max_frames=5)[0], path, fps=30)
    return str(path)


def test_bad_inputs(tiny_checkpoint, internvl, tmp_path):
    ckpt = tiny_checkpoint("ti2v-5B")
    empty, corrupt, config_only = tmp_path / "empty.mp4", tmp_path / "corrupt.mp4", tmp_path / "llava"
    empty.write_bytes(b"")
    corrupt.write_bytes(open(RABBIT, "rb").read()[:3000])
    config_only.mkdir()
    (config_only / "config.json").write_text('{"model_type": "llava"}')
    base = ["--task", "v2v-5B", "--ckpt_dir", ckpt, "--size", "64*64", "--frame_num", "5", "--sample_steps", "1",
            "--device", "cpu", "--save_file", str(tmp_path / "x.mp4")]
    cases = [
        (["--video", str(tmp_path / "missing.mp4"), "--prompt", "p"], "missing.mp4"),
        (["--video", str(empty), "--prompt", "p"], "empty (0 bytes)"),
        (["--video", str(corrupt), "--vlm_path", internvl], "corrupt.mp4"),
        (["--video", short_clip(tmp_path), "--vlm_path", internvl], "at least 8 frames"),
        (["--video", RABBIT, "--vlm_path", str(config_only)], "model_type='llava'"),
        (["--prompt", "p"], "video is required"),
    ]
    for extra, message in cases:
        with pytest.raises(WanInputError, match=re.escape(message)):
            generate.main(base + extra)
    assert not os.path.exists(tmp_path / "x.mp4")
    result = run_script("generate.py", *base, "--video", RABBIT, env={"HF_HOME": str(tmp_path / "empty_hf_home")})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    # Without --vlm_path the seed's captioner is looked up in the local cache (empty here): one line, no download.
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: captioner OpenGVLab/InternVL3_5-8B-HF is not in the local Hugging Face cache")


def run_chain(tiny_checkpoint, internvl, output_dir, num_videos):
    return run_script("generate_continuous.py", "--video", RABBIT, "--task", "v2v-5B", "--ckpt_dir",
                      tiny_checkpoint("ti2v-5B"), "--vlm_path", internvl, "--output_dir", str(output_dir),
                      "--num_videos", str(num_videos), "--size", "64*64", "--frame_num", "9", "--sample_steps", "2",
                      "--base_seed", "10", "--device", "cpu")


def test_chain_of_three_resumes_after_an_interruption(tiny_checkpoint, internvl, tmp_path, rabbit):
    out = tmp_path / "chain"
    first = run_chain(tiny_checkpoint, internvl, out, 2)  # as if killed after video 2
    assert first.returncode == 0, first.stderr
    names = ["video_01_seed10.mp4", "video_02_seed11.mp4"]
    mtimes = [os.stat(out / name).st_mtime_ns for name in names]

    second = run_chain(tiny_checkpoint, internvl, out, 3)
    assert second.returncode == 0, second.stderr
    assert [os.stat(out / name).st_mtime_ns for name in names] == mtimes  # not recomputed
    assert second.stderr.count("already finished") == 2
    assert second.stderr.count("captioning 8 frames") == 1
    assert f"video 3/3: continuing {out / names[1]}" in second.stderr

    names.append("video_03_seed12.mp4")
    assert sorted(f for f in os.listdir(out) if f.startswith("video_")) == names
    log_lines = (out / PROMPTS_LOG).read_text().splitlines()
    assert [line.split("\t")[:2] for line in log_lines] == [[n, f"seed={s}"] for n, s in zip(names, (10, 11, 12))]
    assert log_lines[0].split("\t")[2] == "prompt=" + expected_prompt(internvl, rabbit, "continue video")
    videos = [read_video(out / name)[0] for name in names]
    assert [len(v) for v in videos] == [9, 9, 9]
    stitched, _ = read_video(out / STITCHED_VIDEO)
    assert len(stitched) == 9 + 8 + 8  # each boundary frame once
    # the stitched video is video 1, then videos 2 and 3 without their first frames; it is re-encoded,
    # so each of its frames is matched to the nearest candidate frame
    expected = torch.cat([videos[0], videos[1][1:], videos[2][1:]]).flatten(1).float()
    distances = torch.cdist(stitched.flatten(1).float(), expected)
    assert torch.equal(distances.argmin(dim=1), torch.arange(len(expected)))
