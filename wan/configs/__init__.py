"""Per-task configurations with the official Wan2.2 / Wan2.1 defaults (the official repositories' wan/configs).

`WAN_CONFIGS[task]` supports attribute access (cfg.sample_shift) like the official EasyDicts.
Network sizes are not read from here: the DiT reads its checkpoint's config.json."""
import torch

__all__ = ["WAN_CONFIGS", "SIZE_CONFIGS", "SUPPORTED_SIZES", "MAX_AREA_CONFIGS", "Config"]


class Config(dict):
    """A dict with attribute access, so `cfg.sample_steps` and `cfg["sample_steps"]` both work."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


SAMPLE_NEG_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，"
    "杂乱的背景，三条腿，背景人很多，倒着走"
)

_SHARED = dict(
    t5_model="umt5_xxl",
    t5_dtype=torch.bfloat16,
    text_len=512,
    param_dtype=torch.bfloat16,
    num_train_timesteps=1000,
    sample_fps=16,
    sample_neg_prompt=SAMPLE_NEG_PROMPT,
    frame_num=81,
    t5_checkpoint="models_t5_umt5-xxl-enc-bf16.pth",
    t5_tokenizer="google/umt5-xxl",
    patch_size=(1, 2, 2),
    freq_dim=256,
    window_size=(-1, -1),
    qk_norm=True,
    cross_attn_norm=True,
    eps=1e-6,
)
_A14B = dict(
    vae_checkpoint="Wan2.1_VAE.pth",
    vae_stride=(4, 8, 8),
    dim=5120,
    ffn_dim=13824,
    num_heads=40,
    num_layers=40,
    low_noise_checkpoint="low_noise_model",
    high_noise_checkpoint="high_noise_model",
    sample_steps=40,
)


def _config(name, *parts, **values):
    cfg = Config(__name__=name)
    for part in (_SHARED, *parts, values):
        cfg.update(part)
    return cfg


WAN_CONFIGS = {
    "t2v-A14B": _config("Config: Wan T2V A14B", _A14B, model_type="t2v", in_dim=16, out_dim=16,
                        sample_shift=12.0, boundary=0.875, sample_guide_scale=(3.0, 4.0)),
    "i2v-A14B": _config("Config: Wan I2V A14B", _A14B, model_type="i2v", in_dim=36, out_dim=16,
                        sample_shift=5.0, boundary=0.900, sample_guide_scale=(3.5, 3.5)),
    "ti2v-5B": _config("Config: Wan TI2V 5B", model_type="ti2v", in_dim=48, out_dim=48,
                       vae_checkpoint="Wan2.2_VAE.pth", vae_stride=(4, 16, 16), dim=3072, ffn_dim=14336,
                       num_heads=24, num_layers=30, sample_fps=24, frame_num=121, sample_shift=5.0,
                       sample_steps=50, sample_guide_scale=5.0),
    "t2v-1.3B": _config("Config: Wan2.1 T2V 1.3B", model_type="t2v", in_dim=16, out_dim=16,
                        vae_checkpoint="Wan2.1_VAE.pth", vae_stride=(4, 8, 8), dim=1536, ffn_dim=8960,
                        num_heads=12, num_layers=30, sample_shift=5.0, sample_steps=50, sample_guide_scale=5.0),
    "t2v-14B": _config("Config: Wan2.1 T2V 14B", model_type="t2v", in_dim=16, out_dim=16,
                       vae_checkpoint="Wan2.1_VAE.pth", vae_stride=(4, 8, 8), dim=5120, ffn_dim=13824,
                       num_heads=40, num_layers=40, sample_shift=5.0, sample_steps=50, sample_guide_scale=5.0),
}
# Wan2.1 image-to-video (one config for the 480P and the 720P checkpoint) and first-last-frame:
# one DiT with the CLIP image branch. The official CLI shifts the 480P sizes by 3.0, others by 5.0.
_WAN21_14B = dict(vae_checkpoint="Wan2.1_VAE.pth", vae_stride=(4, 8, 8), dim=5120, ffn_dim=13824, num_heads=40,
                  num_layers=40)
_CLIP = dict(clip_model="clip_xlm_roberta_vit_h_14", clip_dtype=torch.float16,
             clip_checkpoint="models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
             clip_tokenizer="xlm-roberta-large")
WAN_CONFIGS["i2v-14B"] = _config("Config: Wan2.1 I2V 14B", _WAN21_14B, _CLIP, model_type="i2v", in_dim=36,
                                 out_dim=16, sample_shift=5.0, sample_shift_by_size={"832*480": 3.0, "480*832": 3.0},
                                 sample_steps=40, sample_guide_scale=5.0,
                                 sample_neg_prompt="镜头晃动，" + SAMPLE_NEG_PROMPT)
WAN_CONFIGS["flf2v-14B"] = _config("Config: Wan2.1 FLF2V 14B", _WAN21_14B, _CLIP, model_type="flf2v", in_dim=36,
                                   out_dim=16, sample_shift=16.0, sample_steps=50, sample_guide_scale=5.0,
                                   sample_neg_prompt="镜头切换，镜头晃动，" + SAMPLE_NEG_PROMPT)
# Text-to-image runs the Wan2.1 T2V-14B checkpoint for one frame.
WAN_CONFIGS["t2i-14B"] = Config(WAN_CONFIGS["t2v-14B"], __name__="Config: Wan2.1 T2I 14B", frame_num=1)
# Video-to-video continuation runs the image-to-video models unchanged.
WAN_CONFIGS["v2v-14B"] = Config(WAN_CONFIGS["i2v-A14B"], __name__="Config: Wan V2V 14B (I2V-A14B)")
WAN_CONFIGS["v2v-5B"] = Config(WAN_CONFIGS["ti2v-5B"], __name__="Config: Wan V2V 5B (TI2V-5B)")

SIZE_CONFIGS = {
    "720*1280": (720, 1280),
    "1280*720": (1280, 720),
    "480*832": (480, 832),
    "832*480": (832, 480),
    "704*1280": (704, 1280),
    "1280*704": (1280, 704),
    "1024*1024": (1024, 1024),
}

MAX_AREA_CONFIGS = {size: w * h for size, (w, h) in SIZE_CONFIGS.items()}

_A14B_SIZES = ("720*1280", "1280*720", "480*832", "832*480")
SUPPORTED_SIZES = {
    "t2v-A14B": _A14B_SIZES,
    "i2v-A14B": _A14B_SIZES,
    "ti2v-5B": ("704*1280", "1280*704"),
    "t2v-1.3B": ("480*832", "832*480"),
    "t2v-14B": _A14B_SIZES,
    "v2v-14B": _A14B_SIZES,
    "v2v-5B": ("704*1280", "1280*704"),
    "i2v-14B": _A14B_SIZES,
    "flf2v-14B": _A14B_SIZES,
    "t2i-14B": _A14B_SIZES + ("1024*1024",),
}
