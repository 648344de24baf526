"""Tiny random-weight vision-language checkpoints (InternVL-HF, Qwen2.5-VL) for offline tests.

`write_tiny_vlm(arch, dir)` writes what `save_pretrained` writes for a real `-HF` / Qwen-VL
checkpoint: config.json, model.safetensors, the tokenizer files, the chat template and the
processor config, so `wan.modules.vlm.VideoCaptioner` loads it through the same
`from_pretrained(local_dir)` calls as a real one. The tokenizer is a byte-level BPE trained here on a
few sentences, carrying the special tokens each processor looks up.
"""
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForImageTextToText, InternVLConfig, PreTrainedTokenizerFast, Qwen2_5_VLConfig

try:  # transformers with per-backend image processors: the PIL one needs no torchvision
    from transformers import GotOcr2ImageProcessorPil as GotOcr2ImageProcessor
    from transformers import Qwen2VLImageProcessorPil as Qwen2VLImageProcessor
except ImportError:  # earlier releases: the plain classes are the PIL/numpy ones
    from transformers import GotOcr2ImageProcessor, Qwen2VLImageProcessor

from ..modules.vlm import images_only_processor_class
from .randomize import randomize_

ARCHITECTURES = ("internvl", "qwen2_5_vl")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
INTERNVL_SPECIALS = {"start_image_token": "<img>", "end_image_token": "</img>",
                     "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
QWEN_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
_CORPUS = [
    "Describe this video in detail.",
    "A small white rabbit figurine stands on a wooden table while the camera moves slowly around it.",
    "A kitten turns its head on a wooden floor; a dancer spins on a stage under warm light.",
    "Frame1: Frame2: Frame3: Frame4: Frame5: Frame6: Frame7: Frame8: user assistant system",
]

# ChatML, as the -HF InternVL and Qwen-VL checkpoints ship it; `placeholder` is what an image
# item renders to.
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}PLACEHOLDER{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(specials, named_specials=None):
    """A ~300-entry byte-level BPE with every special token at a fixed low id, built in memory."""
    named_specials = named_specials or {}
    special_tokens = CHATML_SPECIALS + specials + list(named_specials.values())
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=special_tokens, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_CORPUS * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   extra_special_tokens=named_specials or None)


def _text_config(tokenizer, **values):
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    return dict(ids, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                **values)


def tiny_internvl(tokenizer):
    """28x28 tiles of 7x7 patches: a 4x4 grid, pixel-shuffled by 0.5 to 4 tokens per frame."""
    config = InternVLConfig(
        vision_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                           image_size=[28, 28], patch_size=[7, 7]),
        text_config=_text_config(tokenizer, model_type="qwen2", hidden_size=16),
        image_token_id=tokenizer.context_image_token_id, image_seq_length=4, downsample_ratio=0.5)
    image_processor = GotOcr2ImageProcessor(size={"height": 28, "width": 28}, crop_to_patches=False,
                                            min_patches=1, max_patches=4, image_mean=IMAGENET_MEAN,
                                            image_std=IMAGENET_STD)
    return config, image_processor, "<IMG_CONTEXT>\n", dict(image_seq_length=4)


def tiny_qwen2_5_vl(tokenizer):
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in
           [("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
            ("vision_token_id", "<|vision_pad|>"), ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>")]}
    config = Qwen2_5_VLConfig(
        text_config=_text_config(tokenizer, hidden_size=32, rope_scaling={
            "type": "mrope", "rope_type": "default", "mrope_section": [2, 2, 4]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[0], window_size=112),
        **ids)
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 16})
    return config, image_processor, "<|vision_start|><|image_pad|><|vision_end|>", {}


def write_tiny_vlm(arch, folder, seed=0):
    """Write a tiny `arch` checkpoint (one of ARCHITECTURES) into `folder`; returns folder."""
    if arch == "internvl":
        tokenizer = build_tokenizer([], INTERNVL_SPECIALS)
        config, image_processor, placeholder, processor_values = tiny_internvl(tokenizer)
    elif arch == "qwen2_5_vl":
        tokenizer = build_tokenizer(QWEN_SPECIALS)
        config, image_processor, placeholder, processor_values = tiny_qwen2_5_vl(tokenizer)
    else:
        raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
    # transformers' default init (std 0.02) makes a tiny model repeat one token; random weights of
    # unit scale give varied, non-empty captions.
    model = randomize_(AutoModelForImageTextToText.from_config(config), seed)
    processor_class = images_only_processor_class(config.model_type)
    processor = processor_class(image_processor=image_processor, tokenizer=tokenizer,
                                chat_template=_CHAT_TEMPLATE.replace("PLACEHOLDER", placeholder), **processor_values)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
