"""Tiny random-weight prompt-extension models for offline tests: a Qwen2-style text LM and a
Qwen2.5-VL-style vision-language model.

Each folder holds what `save_pretrained` writes for a real checkpoint (config.json, weights,
tokenizer with a ChatML chat template, generation_config.json; the VL one also its processor), so
`wan.modules.prompt_extend.PromptExtender` loads it through the same `from_pretrained(folder)`
calls as a real one. The answers are noise, but they are real generations.
"""
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

from .randomize import randomize_
from .tiny_vlm import _CHAT_TEMPLATE, build_tokenizer, write_tiny_vlm

KINDS = ("text", "vl")


def qwen_generation_config(tokenizer):
    """Sampling settings of the Qwen2.5-Instruct kind: the text LM samples unless told otherwise."""
    return GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05,
                            eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id],
                            pad_token_id=tokenizer.pad_token_id)


def write_tiny_text_lm(folder, seed=0):
    """A two-layer Qwen2ForCausalLM over a ~300-token byte-level BPE; returns folder."""
    tokenizer = build_tokenizer([])
    tokenizer.chat_template = _CHAT_TEMPLATE.replace("PLACEHOLDER", "")
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
                         bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    # Unit-scale random weights (as tiny_vlm): transformers' default init repeats one token.
    model = randomize_(Qwen2ForCausalLM(config), seed)
    model.generation_config = qwen_generation_config(tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_tiny_prompt_extender(kind, folder, seed=0):
    """Write a tiny prompt-extension model of `kind` ("text" or "vl") into folder; returns folder."""
    if kind == "text":
        return write_tiny_text_lm(folder, seed)
    if kind == "vl":
        return write_tiny_vlm("qwen2_5_vl", folder, seed)
    raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
