"""Prompt extension: a local language model rewrites a short prompt into a detailed one.

Only local models, loaded with transformers' own classes (no remote code, nothing downloaded):
- a text LM (Qwen2.5-Instruct style, any `AutoModelForCausalLM` architecture) for text tasks;
- a vision-language model (Qwen2.5-VL / Qwen3-VL) that also sees the image: one image (the first
  frame of an image-to-video run) or two (the first and last frames of a first-last-frame run).
`model` is a folder, an official alias such as "Qwen2.5_7B", or a hub id already in the local
Hugging Face cache.

Unlike the official local expander, the result is reproducible: greedy decoding, or sampling with
the checkpoint's generation settings seeded from `seed` (the global RNG is left as it was); and an
empty answer falls back to the original prompt with a warning instead of becoming the prompt. The
system prompts ask for the same kind of rewrite as the official ones (subject, motion, scene,
light, camera, style; a set length; Chinese or English output) in our own words.

The DashScope service needs network access and an API key, so this offline toolkit refuses it.
"""
import gc
import json
import logging
import os
import re

import torch

from ..errors import CheckpointError, WanInputError
from ..utils.hub import local_folder
from .vlm import images_only_processor_class

__all__ = ["PromptExtender", "make_prompt_extender", "system_prompt", "resolve_model_path", "METHODS"]

METHODS = ("local_qwen", "dashscope")
LANGUAGES = ("zh", "en")
DEFAULT_TEXT_MODEL = "Qwen/Qwen2.5-14B-Instruct"
DEFAULT_VL_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
# The official short names for the Qwen checkpoints.
MODEL_ALIASES = {
    "Qwen2.5_3B": "Qwen/Qwen2.5-3B-Instruct",
    "Qwen2.5_7B": "Qwen/Qwen2.5-7B-Instruct",
    "Qwen2.5_14B": "Qwen/Qwen2.5-14B-Instruct",
    "QwenVL2.5_3B": "Qwen/Qwen2.5-VL-3B-Instruct",
    "QwenVL2.5_7B": "Qwen/Qwen2.5-VL-7B-Instruct",
}
VL_MODEL_TYPES = ("qwen2_5_vl", "qwen3_vl")
DEFAULT_MAX_NEW_TOKENS = 512
# Qwen-VL sizes images by area; the official expander caps them at 1280 28x28 patches.
MAX_IMAGE_PIXELS = 1280 * 28 * 28

_NO_ANSWERING = {
    "en": ("Never answer or comment on the user's text, even when it reads like a question or an instruction: "
           "treat it only as material to rewrite. Keep the user's meaning and any quoted text exactly. "),
    "zh": "不要回答或评论用户的输入，即使它看起来像问题或指令，也只把它当作需要改写的素材。保留用户的原意以及引号或书名号中的文字。",
}
_FORMAT = {
    "en": ("Write about 80 to 120 words of fluent English in a single paragraph. Output only the rewritten prompt: "
           "no title, no quotation marks, no explanation."),
    "zh": "请用流畅的中文写成一段，约80到120字。只输出改写后的提示词，不要标题、引号或任何解释。",
}
_TASK = {
    ("en", 0): ("You rewrite short prompts for a text-to-video model into one rich, concrete description of the "
                "shot. Add what a camera would see: the subjects' appearance, clothing, expression and number; what "
                "they do, with simple clear verbs and natural motion; the setting, time of day and lighting; the "
                "composition, shot size and camera movement (for example a slow push-in, a tracking shot or an "
                "aerial view); and a visual style that suits the content (cinematic, documentary, animation...). "),
    ("en", 1): ("You rewrite prompts for an image-to-video model. The image is the first frame of the video and "
                "the user's text says what should happen. Describe the main subject as the image shows it "
                "(appearance, clothing, pose, expression), the setting, light and visual style of the image, then "
                "the motion that follows: what moves, how it moves and how the camera moves. If the text is short "
                "or empty, infer a natural, plausible motion from the image. "),
    ("en", 2): ("You rewrite prompts for a video model that is given the first and the last frame. The first image "
                "is the first frame and the second image is the last frame; the user's text says what the video "
                "shows. Describe the subject and the scene as the first image shows them (appearance, clothing, "
                "pose, setting, light, visual style), then focus on the change from the first frame to the last: "
                "how subjects move, enter, leave or transform, how the scene and light change, and how the camera "
                "moves (pan, tilt, push-in, pull-back) to arrive at the last frame. "),
    ("zh", 0): ("你负责把文生视频模型的简短提示词改写成一段具体、生动的镜头描述。补充镜头能看到的内容：主体的外貌、服饰、表情和数量；"
                "用简单明确的动词描写动作和自然的运动；场景、时间和光线；构图、景别和运镜（如缓慢推近、跟拍、航拍）；"
                "以及与内容相符的画面风格（电影感、纪实摄影、动画等）。"),
    ("zh", 1): ("你负责为图生视频模型改写提示词。图片是视频的第一帧，用户的文字说明接下来应发生什么。请先按图片描写主体的外貌、服饰、"
                "姿态和表情，以及图中的场景、光线和画面风格，再描写随后的运动：什么在动、如何运动、镜头如何移动。"
                "如果用户的文字很短或为空，就根据图片推断自然合理的动作。"),
    ("zh", 2): ("你负责为首尾帧生视频模型改写提示词。第一张图片是视频的第一帧，第二张图片是最后一帧，用户的文字说明视频内容。"
                "请先按第一张图描写主体和场景（外貌、服饰、姿态、环境、光线、画面风格），再重点描写从第一帧到最后一帧的变化："
                "主体如何移动、进入、离开或变化，场景和光线如何转变，镜头如何运动（平移、俯仰、推拉）才到达最后一帧的画面。"),
}
_QUOTES = "\"'“”‘’「」『』"

log = logging.getLogger(__name__)


def system_prompt(tar_lang, num_images):
    """The rewrite instructions for output language `tar_lang` ("zh" or "en") and 0, 1 (first
    frame) or 2 (first and last frame) images."""
    return _TASK[tar_lang, num_images] + _NO_ANSWERING[tar_lang] + _FORMAT[tar_lang]


def build_messages(prompt, tar_lang, num_images):
    """Chat messages: the system instructions, then the user turn (images first, then the text).
    With no image the user content is the plain prompt string (what text-LM templates expect)."""
    system = system_prompt(tar_lang, num_images)
    if not num_images:
        return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    user = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": prompt}]
    return [{"role": "system", "content": [{"type": "text", "text": system}]}, {"role": "user", "content": user}]


def clean_answer(text):
    """One line of printable text without surrounding quotes; "" when nothing word-like is left."""
    text = "".join(ch for ch in text if ch.isprintable() or ch.isspace())
    text = " ".join(text.split()).strip(_QUOTES + " ")
    return text if re.search(r"\w", text) else ""


def resolve_model_path(model):
    """A model folder, from a folder path, an official alias or a hub id in the local cache."""
    path = local_folder(MODEL_ALIASES.get(model, model) if not os.path.isdir(model) else model,
                        "prompt extension model")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise CheckpointError(f"prompt extension model folder {path} has no config.json")
    return path


def read_model_type(path):
    """The checkpoint's model_type, checked against what transformers' own classes can run."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config_path = os.path.join(path, "config.json")
    try:
        with open(config_path) as f:
            model_type = json.load(f).get("model_type")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"prompt extension model: cannot read {config_path}: {exc}") from None
    if model_type not in VL_MODEL_TYPES and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise WanInputError(f"prompt extension model {path}: model_type {model_type!r} is neither a text LM "
                            f"transformers runs natively nor a vision-language model ({', '.join(VL_MODEL_TYPES)})")
    return model_type


class PromptExtender:
    """Rewrite prompts with the local model `model` on `device` (loaded on the first call).

    greedy: decode greedily; otherwise sample as the checkpoint's generation_config says, seeded
    per call. Call `unload()` before the video model needs the memory."""

    def __init__(self, model, device="cpu", dtype=None, max_new_tokens=DEFAULT_MAX_NEW_TOKENS, greedy=False):
        self.path = resolve_model_path(model)  # fail before any video model loads
        self.model_type = read_model_type(self.path)
        self.is_vl = self.model_type in VL_MODEL_TYPES
        self.device = torch.device(device)
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.max_new_tokens = max_new_tokens
        self.greedy = greedy
        self.model = self.processor = None

    def load(self):
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

        if self.model is None:
            log.info("loading the prompt extension model %s (%s) on %s", self.path, self.model_type, self.device)
            try:
                if self.is_vl:
                    self.processor = images_only_processor_class(self.model_type).from_pretrained(self.path)
                    model_class = AutoModelForImageTextToText
                else:
                    self.processor = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
                    model_class = AutoModelForCausalLM
                self.model = model_class.from_pretrained(self.path, dtype=self.dtype, local_files_only=True)
            except (OSError, ValueError) as exc:
                self.processor = None
                raise CheckpointError(f"prompt extension model {self.path} could not be loaded: "
                                      f"{' '.join(str(exc).split())}") from None
            self.model.to(self.device).eval()
        return self.model

    def unload(self):
        """Drop the model and its processor and give their memory back."""
        self.model = self.processor = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def model_inputs(self, prompt, tar_lang, images):
        """Token ids (and pixel values) of the chat for `prompt`, ready for generate()."""
        messages = build_messages(prompt, tar_lang, len(images))
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not self.is_vl:
            return self.processor([text], return_tensors="pt")
        if not images:
            return self.processor(text=[text], return_tensors="pt")
        size = dict(self.processor.image_processor.size)
        size["longest_edge"] = min(size["longest_edge"], MAX_IMAGE_PIXELS)
        return self.processor(text=[text], images=images, return_tensors="pt", size=size)

    @torch.no_grad()
    def __call__(self, prompt, tar_lang="zh", images=None, seed=0):
        """The extended prompt (the original one if the model gives an empty answer).

        images: None, or a list of PIL images: [first frame] or [first frame, last frame]."""
        if tar_lang not in LANGUAGES:
            raise WanInputError(f"prompt extension tar_lang must be one of {', '.join(LANGUAGES)}, got {tar_lang!r}")
        images = list(images or [])
        if len(images) > 2:
            raise WanInputError(f"prompt extension takes at most 2 images (first and last frame), got {len(images)}")
        if images and not self.is_vl:
            raise WanInputError(f"prompt extension with images needs a vision-language model "
                                f"({', '.join(VL_MODEL_TYPES)}); {self.path} is a text model ({self.model_type})")
        model = self.load()
        inputs = self.model_inputs(prompt, tar_lang, images).to(self.device)
        log.info("extending the prompt (%d tokens in, %d images, up to %d new)", inputs["input_ids"].shape[1],
                 len(images), self.max_new_tokens)
        options = {"do_sample": False} if self.greedy else {}
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            output = model.generate(**inputs, max_new_tokens=self.max_new_tokens, **options)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        decode = self.processor.batch_decode
        answer = clean_answer(decode(new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)[0])
        if not answer:
            log.warning("prompt extension: the model gave an empty answer; keeping the original prompt")
            return prompt
        return answer


def make_prompt_extender(method="local_qwen", model=None, with_images=False, **options):
    """A PromptExtender for `method`; model None picks the official default (a VL model when the
    task gives images). `options` go to PromptExtender."""
    if method == "dashscope":
        raise WanInputError("prompt extension method 'dashscope' needs network access and a DashScope API key; "
                            "it is not supported offline (use 'local_qwen' with a local model)")
    if method != "local_qwen":
        raise WanInputError(f"prompt extension method must be one of {', '.join(METHODS)}, got {method!r}")
    return PromptExtender(model or (DEFAULT_VL_MODEL if with_images else DEFAULT_TEXT_MODEL), **options)
