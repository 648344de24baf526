"""4-step distilled sampling: the Lightning preset's schedule is the recipe's, the A14B experts switch
after step 2, and LoRAs from the command line reach the experts they name."""
import os

import pytest
import torch
import yaml

import generate
from conftest import REPO
from wan import flow, tasks
from wan.configs import WAN_CONFIGS
from wan.models import Models
from wan.runner import Runner
from wan.settings import Generation, LoadOptions, Sampling


def preset(name):
    with open(os.path.join(REPO, "configs", name)) as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize("name", ["lightning_t2v_a14b.yaml", "lightning_i2v_a14b.yaml", "edit_lightning.yaml"])
def test_the_preset_schedule_is_the_lightning_recipe(name):
    schedule = flow.sampling_schedule(Sampling.from_dict(preset(name)["sampling"]))
    assert schedule.sigma_values == pytest.approx([1.0, 0.9375, 0.833333, 0.625, 0.0], abs=1e-6)
    assert schedule.timesteps.tolist() == pytest.approx([1000.0, 937.5, 833.3333, 625.0, 0.0], abs=1e-3)


@pytest.mark.parametrize("task", ["t2v-A14B", "i2v-A14B"])
def test_the_experts_switch_after_step_two(task):
    field = flow.GuidedVelocity((object(), object()), [], None, 1.0, 1, boundary=WAN_CONFIGS[task].boundary)
    schedule = flow.sampling_schedule(Sampling.from_dict(preset("lightning_t2v_a14b.yaml")["sampling"]))
    assert [field.expert_index(t) for t in schedule.timesteps[:-1]] == [1, 1, 0, 0]


def lora_file(model, path, seed):
    """A LoRA in the kohya/lightx2v naming for every block's self-attention q of `model`."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for index in range(len(model.blocks)):
        linear = model.blocks[index].self_attn.q
        key = f"diffusion_model.blocks.{index}.self_attn.q"
        state[f"{key}.lora_down.weight"] = torch.randn(4, linear.in_features, generator=g)
        state[f"{key}.lora_up.weight"] = torch.randn(linear.out_features, 4, generator=g)
        state[f"{key}.alpha"] = torch.tensor(4.0)
    from safetensors.torch import save_file

    save_file(state, path)
    return path


def test_loras_from_the_command_line_reach_their_experts(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("t2v-A14B")
    config = WAN_CONFIGS["t2v-A14B"]
    plain = Models.load(config, ckpt, LoadOptions(device="cpu"), parts=("dit",))
    low, high = plain.experts
    high_file = lora_file(high, str(tmp_path / "high_noise_model.safetensors"), 1)
    low_file = lora_file(low, str(tmp_path / "low_noise_model.safetensors"), 2)
    loaded = Models.load(config, ckpt, LoadOptions(device="cpu", lora_high=(high_file,), lora_low=(f"{low_file}:0.5",)),
                         parts=("dit",))
    for before, after in zip(plain.experts, loaded.experts):
        assert not torch.equal(before.blocks[0].self_attn.q.weight, after.blocks[0].self_attn.q.weight)
        assert torch.equal(before.blocks[0].self_attn.k.weight, after.blocks[0].self_attn.k.weight)
    # the low-noise expert got its own LoRA at half strength: (alpha / rank) * 0.5 * up @ down
    from safetensors.torch import load_file

    lora = load_file(low_file)
    delta = 0.5 * lora["diffusion_model.blocks.0.self_attn.q.lora_up.weight"] @ \
        lora["diffusion_model.blocks.0.self_attn.q.lora_down.weight"]
    torch.testing.assert_close(loaded.experts[0].blocks[0].self_attn.q.weight - plain.experts[0].blocks[0].self_attn.q.weight,
                               delta, rtol=1e-5, atol=1e-6)


def test_a_lightning_run_end_to_end(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("t2v-A14B")
    config_path = os.path.join(REPO, "configs", "lightning_t2v_a14b.yaml")
    out = str(tmp_path / "fast.mp4")
    assert generate.main(["--config", config_path, "--ckpt_dir", ckpt, "--size", "64*64", "--frame_num", "5",
                          "--save_file", out, "--device", "cpu", "--prompt", "a fox"]) == out
    resolved = yaml.safe_load(open(tmp_path / "fast.settings.yaml"))
    assert resolved["sampling"] == {"solver": "euler", "steps": 4, "shift": 5.0, "guide_scale": [1.0, 1.0],
                                    "exact_timesteps": True}
    # no unconditional pass: one DiT forward per step
    models = Models.load(WAN_CONFIGS["t2v-A14B"], ckpt, LoadOptions(device="cpu"))
    calls = []
    for model in models.experts:
        model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(len(kwargs["context"])),
                                        with_kwargs=True)
    generation = Generation.from_dict({**tasks.defaults("t2v-A14B"), "prompt": "a fox", "size": (64, 64),
                                       "frame_num": 5, "seed": 1, "sampling": preset("lightning_t2v_a14b.yaml")["sampling"]})
    Runner(models, progress=False).denoise(tasks.prepare(models, generation))
    assert calls == [1, 1, 1, 1]
