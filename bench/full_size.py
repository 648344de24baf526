"""Full-size random TI2V-5B and i2v-A14B networks on the GPU for benchmarks, as `Models` built from
networks in memory (random weights time the same as real ones; writing 20 GB of random weights to
disk first would only cost lease time; bench/checkpoint_writer.py does it where the loading is what
is measured)."""
import os
import tempfile

import torch

from wan.configs import WAN_CONFIGS
from wan.models import Models
from wan.modules import vae2_1
from wan.modules.model import WanModel
from wan.modules.t5 import meta_umt5_encoder, umt5_config
from wan.modules.vae2_2 import WanVAE_
from wan.settings import LoadOptions
from wan.tools.make_tiny_checkpoint import make_tiny_checkpoint

TI2V_5B = dict(model_type="ti2v", in_dim=48, out_dim=48, dim=3072, ffn_dim=14336, num_heads=24, num_layers=30)
A14B_I2V = dict(model_type="i2v", in_dim=36, out_dim=16, dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)


def random_on_device(module, device, dtype, seed=0):
    """Materialise a meta-device module on `device` with N(0, 1/fan_in) weights (norms near 1)."""
    module = module.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, p[0].numel() ** -0.5, generator=gen)
            else:
                p.normal_(1.0 if "norm" in name or "gamma" in name else 0.0, 0.1, generator=gen)
    return module.to(dtype).eval().requires_grad_(False)


def full_size_vae(device, dtype, seed=2):
    with torch.device("meta"):
        vae = WanVAE_(dim=160, dec_dim=256, z_dim=48)
    return random_on_device(vae, device, dtype, seed)


def full_size_ti2v_models(device, compile_model=True, vae_dtype=torch.bfloat16, fp8=False, attention=None,
                          offload_model=False):
    """Models of a full-size TI2V-5B with random weights, built from networks in memory: a tiny
    checkpoint gives the tokenizer and the wrappers; the DiT, the Wan2.2 VAE and umt5-xxl are full
    size on `device`. `compile_model` and `fp8` do what --compile and --fp8 do."""
    return _full_size_models("ti2v-5B", [TI2V_5B], full_size_vae(device, vae_dtype), device, compile_model,
                             vae_dtype, fp8, attention, offload_model)


def full_size_a14b_models(device, compile_model=True, vae_dtype=torch.bfloat16, fp8=False, attention=None):
    """Models of a full-size i2v-A14B: both experts (28.6 GB each in bf16), the Wan2.1 VAE and
    umt5-xxl, all resident on `device`."""
    with torch.device("meta"):
        vae = vae2_1.WanVAE_()
    vae = random_on_device(vae, device, vae_dtype, seed=2)
    return _full_size_models("i2v-A14B", [A14B_I2V, A14B_I2V], vae, device, compile_model, vae_dtype, fp8,
                             attention, False)


def _full_size_models(task, dit_configs, vae_model, device, compile_model, vae_dtype, fp8, attention,
                      offload_model):
    config = WAN_CONFIGS[task]
    ckpt = make_tiny_checkpoint(task, os.path.join(tempfile.mkdtemp(), "ckpt"))
    small = Models.load(config, ckpt, LoadOptions(device=str(device), attention=attention), parts=("t5", "vae"))
    experts = []
    for seed, dit_config in zip((1, 4), dit_configs):  # the T5 and the VAE draw from seeds 3 and 2
        with torch.device("meta"):
            dit = WanModel(**dit_config)
        dit = random_on_device(dit, device, torch.bfloat16, seed=seed)
        if fp8:
            dit.quantize_fp8()
        if compile_model:
            dit.compile_blocks()
        experts.append(dit)
    vae = small.vae
    vae.model, vae.dtype = vae_model.use_channels_last(), vae_dtype  # as on the GPU
    if compile_model:
        vae.model.compile_decoder()
    t5 = random_on_device(meta_umt5_encoder(umt5_config()), device, torch.bfloat16, seed=3)
    t5.set_input_embeddings(t5.shared)
    small.text_encoder.model = t5
    return Models(config, small.text_encoder, vae, experts, device, offload_model=offload_model,
                  fingerprint="full-size-random")
