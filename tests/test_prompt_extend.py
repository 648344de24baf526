"""Prompt extension with tiny local models: deterministic per seed, images seen, fallback, refusals."""
import gc
import logging
import weakref

import numpy as np
import pytest
import torch
from PIL import Image

from wan.errors import CheckpointError, WanInputError
from wan.modules.prompt_extend import PromptExtender, build_messages, make_prompt_extender, system_prompt
from wan.tools.tiny_prompt_extend import write_tiny_prompt_extender

NEW_TOKENS = 16


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{"text": folder, "vl": folder} of tiny random models."""
    root = tmp_path_factory.mktemp("prompt_extend")
    return {kind: write_tiny_prompt_extender(kind, str(root / kind), seed=seed)
            for kind, seed in (("text", 1), ("vl", 0))}


def image(seed, size=(96, 64)):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_text_model_is_deterministic_per_seed(models):
    """The tiny LM samples (its generation_config says so, as Qwen2.5-Instruct's does): the same
    seed gives the same text, another seed another text; greedy decoding ignores the seed."""
    extend = PromptExtender(models["text"], max_new_tokens=NEW_TOKENS)
    prompt = "a cat walks in the light"
    first, again, other = (extend(prompt, "en", seed=s) for s in (3, 3, 4))
    assert first and first != prompt
    assert first == again and first != other
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    extend(prompt, "zh", seed=3)
    assert torch.equal(torch.rand(1), before)  # the caller's RNG stream is left as it was
    extend.greedy = True
    assert extend(prompt, "en", seed=3) == extend(prompt, "en", seed=4)


def test_vl_model_sees_the_images_in_order(models):
    """One image (first frame): the answer depends on the pixels. Two (first, last): both reach the
    model, in that order (the tiny model is too small for the order to change its greedy answer)."""
    extend = PromptExtender(models["vl"], max_new_tokens=NEW_TOKENS)
    a, b = image(1, size=(200, 120)), image(2, size=(120, 160))
    single = extend("a dog runs", "en", images=[a], seed=0)
    assert single != "a dog runs"  # not the fallback
    assert single == extend("a dog runs", "en", images=[a], seed=0)
    assert single != extend("a dog runs", "en", images=[b], seed=0)
    assert extend("a dog runs", "en", images=[a, b], seed=0) != "a dog runs"
    grids = [extend.model_inputs("a dog runs", "en", images)["image_grid_thw"].tolist() for images in ([a], [b])]
    pair = extend.model_inputs("a dog runs", "en", [a, b])
    assert pair["image_grid_thw"].tolist() == grids[0] + grids[1]
    image_tokens = (pair["input_ids"] == extend.model.config.image_token_id).sum().item()
    assert image_tokens == sum(t * h * w for t, h, w in pair["image_grid_thw"].tolist()) // 4  # 2x2 merge
    assert extend("a dog runs", "en", seed=0)  # a VL model also rewrites text-only prompts


def test_messages_and_system_prompt_follow_images_and_language():
    for lang in ("zh", "en"):
        prompts = {n: system_prompt(lang, n) for n in (0, 1, 2)}
        assert len(set(prompts.values())) == 3
    assert "中文" in system_prompt("zh", 1) and "English" in system_prompt("en", 2)
    text_only = build_messages("a cat", "en", 0)
    assert text_only == [{"role": "system", "content": system_prompt("en", 0)}, {"role": "user", "content": "a cat"}]
    pair = build_messages("a cat", "zh", 2)
    assert pair[0]["content"][0]["text"] == system_prompt("zh", 2)
    assert [part["type"] for part in pair[1]["content"]] == ["image", "image", "text"]
    assert pair[1]["content"][2]["text"] == "a cat"


def test_empty_answer_falls_back_to_the_prompt(models, tmp_path, caplog):
    """A model whose final norm is zero emits token 0 (<|endoftext|>, an end token) first: its
    answer decodes to nothing, and the original prompt comes back with a warning."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    silent = AutoModelForCausalLM.from_pretrained(models["text"])
    with torch.no_grad():
        silent.model.norm.weight.zero_()
    silent.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(models["text"]).save_pretrained(tmp_path)
    extend = PromptExtender(str(tmp_path), max_new_tokens=NEW_TOKENS, greedy=True)
    with caplog.at_level(logging.WARNING, logger="wan.modules.prompt_extend"):
        assert extend("a red fox in the snow", "en", seed=0) == "a red fox in the snow"
    assert "empty answer" in caplog.text


def test_unload_frees_the_model(models):
    extend = PromptExtender(models["text"], max_new_tokens=4)
    extend("a cat", "en")
    model = weakref.ref(extend.model)
    extend.unload()
    gc.collect()
    assert model() is None and extend.model is None
    assert extend("a cat", "en")  # loads again on the next call


def test_refusals_are_one_line_errors(models, tmp_path):
    with pytest.raises(WanInputError, match="dashscope") as err:
        make_prompt_extender("dashscope", "qwen-plus")
    assert "\n" not in str(err.value)
    with pytest.raises(WanInputError, match="must be one of"):
        make_prompt_extender("openai")
    with pytest.raises(CheckpointError, match="neither a folder nor a Hugging Face repo id") as err:
        PromptExtender(str(tmp_path / "no_such_model"))
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="local Hugging Face cache"):
        make_prompt_extender("local_qwen", "Qwen2.5_14B")  # an official alias, not in the cache here
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        PromptExtender(str(tmp_path / "empty"))
    text = PromptExtender(models["text"], max_new_tokens=4)
    with pytest.raises(WanInputError, match="needs a vision-language model"):
        text("a cat", "en", images=[image(1)])
    with pytest.raises(WanInputError, match="tar_lang"):
        text("a cat", "fr")
    with pytest.raises(WanInputError, match="at most 2 images"):
        PromptExtender(models["vl"])("a cat", "en", images=[image(1)] * 3)
