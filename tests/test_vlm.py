"""The video captioner on tiny InternVL-HF and Qwen2.5-VL checkpoints written to disk and loaded back
through from_pretrained, offline."""
import json
import os

import numpy as np
import pytest
import torch

from conftest import DATA, run_script
from wan.errors import CheckpointError, WanInputError
from wan.modules.vlm import VideoCaptioner, read_model_type
from wan.utils.video_io import read_video, sample_frame_indices

RABBIT = os.path.join(DATA, "rabbit-figurine", "source.mp4")


@pytest.mark.parametrize("arch", ["internvl", "qwen2_5_vl"])
def test_caption_is_deterministic_text_from_eight_labelled_frames(tiny_vlm, arch):
    frames, _ = read_video(RABBIT)
    captioner = VideoCaptioner(tiny_vlm(arch), max_new_tokens=6)
    first = captioner.caption(frames)
    assert isinstance(first, str) and "\n" not in first
    assert captioner.caption(frames) == first  # greedy decoding
    inputs = captioner.processor_inputs(captioner.sample_frames(frames))
    prompt = captioner.processor.tokenizer.decode(inputs["input_ids"][0])
    assert [f"Frame{i}: " in prompt for i in range(1, 10)] == [True] * 8 + [False]
    assert prompt.rstrip().endswith("Describe this video in detail.<|im_end|>\n<|im_start|>assistant")
    if arch == "internvl":
        # One 28x28 tile per frame (no tiling, no thumbnail), 4 context tokens each, as the official prompt.
        assert inputs["pixel_values"].shape == (8, 3, 28, 28)
        assert prompt.count("<IMG_CONTEXT>") == 8 * 4
        assert prompt.count("<img>") == 8
    else:
        assert inputs["image_grid_thw"].shape[0] == 8


def test_captioner_sees_eight_frames_spread_over_the_whole_clip(tiny_vlm):
    num_frames = 40
    frames = torch.arange(num_frames, dtype=torch.uint8)[:, None, None, None].expand(num_frames, 16, 16, 3)
    captioner = VideoCaptioner(tiny_vlm("internvl"))
    images = captioner.sample_frames(frames.contiguous())
    seen = [int(np.asarray(image).mean()) for image in images]
    assert seen == sample_frame_indices(num_frames, 8) == [2, 7, 12, 17, 22, 27, 32, 37]


def test_unsupported_architecture_and_missing_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(WanInputError, match="model_type='llava'"):
        VideoCaptioner(str(tmp_path))
    with pytest.raises(CheckpointError, match="^captioner .*nowhere: no config.json"):
        read_model_type(str(tmp_path / "nowhere"))


def test_make_tiny_checkpoint_writes_a_loadable_captioner(tmp_path):
    folder = tmp_path / "qwen"
    result = run_script("-m", "wan.tools.make_tiny_checkpoint", "--vlm", "qwen2_5_vl", str(folder))
    assert result.returncode == 0, result.stderr
    assert read_model_type(str(folder)) == "qwen2_5_vl"
    frames, _ = read_video(RABBIT)
    assert isinstance(VideoCaptioner(str(folder), max_new_tokens=3).caption(frames), str)
