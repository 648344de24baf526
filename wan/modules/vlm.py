"""Video captioner: a vision-language model (InternVL3.5 -HF, Qwen2.5-VL, Qwen3-VL) describes a clip.

The architecture is read from the checkpoint's config.json and loaded with transformers' native
classes (no remote code). Frames are sampled uniformly over the whole clip (segment centres, as in
InternVL's video demo) and given to the model as a sequence of images, each line labelled
`Frame{i}:`. For InternVL this is exactly the official video prompt (one 448x448 tile per frame);
the image route is used for every architecture because it needs no torchvision, so the same code
runs on every install.

The model loads lazily on the first caption. With `offload=True` (the video model shares the
device) it is parked on the CPU after each caption and the CUDA cache is emptied, so the video model
gets the memory back.
"""
import gc
import json
import logging
import os

import torch
from PIL import Image

from ..errors import CheckpointError, WanInputError
from ..utils.hub import local_folder
from ..utils.video_io import sample_frame_indices

DEFAULT_QUESTION = "Describe this video in detail."
DEFAULT_NUM_FRAMES = 8
DEFAULT_MAX_NEW_TOKENS = 256
# Qwen-VL sizes each image by pixel count; cap a frame at qwen-vl-utils' per-frame video budget
# (768 * 28^2) so eight frames stay near 6k tokens instead of the image default's 16k each.
QWEN_FRAME_MAX_PIXELS = 768 * 28 * 28

PROCESSOR_CLASSES = {
    "internvl": "InternVLProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "qwen3_vl": "Qwen3VLProcessor",
}

log = logging.getLogger(__name__)


def read_model_type(path):
    """The checkpoint's `model_type`; a clear error for a missing folder or an unsupported model."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise CheckpointError(f"captioner {path}: no config.json (expected a transformers checkpoint folder)")
    try:
        with open(config_path) as f:
            model_type = json.load(f).get("model_type")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"captioner: cannot read {config_path}: {exc}") from None
    if model_type not in PROCESSOR_CLASSES:
        raise WanInputError(f"captioner: unsupported architecture model_type={model_type!r} in "
                            f"{config_path}; supported: {', '.join(PROCESSOR_CLASSES)} (InternVL needs the -HF "
                            "checkpoint)")
    return model_type


def images_only_processor_class(model_type):
    """The architecture's processor class without its video processor slot.

    transformers' video processors need torchvision; frames go through the image processor here,
    so the processor is built (and loaded) from the image processor and the tokenizer only."""
    import transformers

    base = getattr(transformers, PROCESSOR_CLASSES[model_type])
    # Same class name, so a saved processor_config.json names the real class.
    return type(base.__name__, (base,), {"get_attributes": classmethod(lambda cls: ["image_processor", "tokenizer"])})


def frame_messages(num_frames, question):
    """One user turn: `Frame{i}: <image>` per frame, then the question (InternVL's video prompt)."""
    content = []
    for index in range(num_frames):
        content += [{"type": "text", "text": f"Frame{index + 1}: "}, {"type": "image"}]
    content.append({"type": "text", "text": question})
    return [{"role": "user", "content": content}]


DEFAULT_CAPTIONER = "OpenGVLab/InternVL3_5-8B-HF"  # the seed chain's captioner, from the local HF cache


class VideoCaptioner:
    """Describe a clip with a VLM checkpoint (`path`: a folder or a repo id in the local Hugging Face
    cache), loaded on first use on `device`."""

    def __init__(self, path, device="cpu", dtype=None, question=DEFAULT_QUESTION,
                 max_new_tokens=DEFAULT_MAX_NEW_TOKENS, num_frames=DEFAULT_NUM_FRAMES, offload=False):
        self.path = local_folder(path, "captioner")  # a folder, or a repo id in the local Hugging Face cache
        self.model_type = read_model_type(self.path)  # fail before any video model loads
        self.device = torch.device(device)
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.question = question
        self.max_new_tokens = max_new_tokens
        self.num_frames = num_frames
        self.offload = offload
        self.model = self.processor = None

    def load(self):
        from transformers import AutoModelForImageTextToText

        if self.model is None:
            log.info("loading captioner %s (%s) on %s", self.path, self.model_type, self.device)
            self.processor = images_only_processor_class(self.model_type).from_pretrained(self.path)
            self.model = AutoModelForImageTextToText.from_pretrained(self.path, dtype=self.dtype).eval()
        self.model.to(self.device)
        return self.model

    def release(self):
        """Give the device memory back: park the model on the CPU (offload) and empty the CUDA cache."""
        if self.offload and self.model is not None:
            self.model.to("cpu")
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def close(self):
        """Drop the model entirely (weights, processor) and free its memory."""
        self.model = self.processor = None
        self.release()

    def sample_frames(self, frames):
        """`num_frames` frames at the centres of equal segments of the whole clip, as PIL images."""
        indices = sample_frame_indices(len(frames), self.num_frames)
        return [Image.fromarray(frames[i].cpu().numpy()) for i in indices]

    def processor_inputs(self, images):
        text = self.processor.apply_chat_template(frame_messages(len(images), self.question),
                                                  add_generation_prompt=True, tokenize=False)
        if self.model_type == "internvl":
            # One tile per frame (no tiling, no thumbnail), as InternVL's video demo (max_num=1).
            extra = dict(crop_to_patches=False)
        else:
            longest = min(self.processor.image_processor.size["longest_edge"], QWEN_FRAME_MAX_PIXELS)
            extra = dict(size={"shortest_edge": self.processor.image_processor.size["shortest_edge"],
                               "longest_edge": longest})
        return self.processor(text=[text], images=images, return_tensors="pt", **extra)

    @torch.no_grad()
    def caption(self, frames):
        """Caption uint8 frames [F, H, W, 3] (F >= num_frames); whitespace collapsed to one line."""
        images = self.sample_frames(frames)
        model = self.load()
        try:
            inputs = self.processor_inputs(images).to(self.device)
            log.info("captioning %d frames (%d prompt tokens, up to %d new)", len(images),
                     inputs["input_ids"].shape[1], self.max_new_tokens)
            output = model.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens)
            new_tokens = output[:, inputs["input_ids"].shape[1]:]
            text = self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0]
        finally:
            self.release()
        return " ".join(text.split())
