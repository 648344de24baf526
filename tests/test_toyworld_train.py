"""The toy-world trainer (wan.toyworld.train): objectives, the fused-norm trap, the latent fold,
the official export layout, resuming, on the CPU with tiny widths."""
import json
import os
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file

from wan.configs import WAN_CONFIGS
from wan.errors import WanInputError
from wan.modules import vae_blocks
from wan.modules.model import WanModel
from wan.modules.t5 import T5EncoderModel
from wan.modules.tokenizers import clean_text
from wan.modules.vae2_2 import Wan2_2_VAE
from wan.toyworld.tokenizer import build_caption_tokenizer, grammar_words
from wan.toyworld.train import build_parser, main
from wan.toyworld.training.common import make_optimizer, new_state
from wan.toyworld.training.data import to_model_video
from wan.toyworld.training.dit_model import build_dit, predict_velocity
from wan.toyworld.training.dit_stage import DitTrainer, LatentSet, first_compiled_step, held_out_losses
from wan.toyworld.training.export import finish_export
from wan.toyworld.training.flow_objective import flow_matching_loss, noisy_latents, token_timesteps
from wan.toyworld.training.text import write_text_encoder
from wan.toyworld.training.vae_stage import (UNNORMALISED, build_vae, floor_collapsed, fold_latent_statistics_,
                                             latent_statistics, posterior, reconstruction_loss, save_vae_checkpoint,
                                             unfused_norms, vae_loss, vae_param_groups)
from wan.toyworld.world import Scene, render_batch
from wan.utils.fileio import torch_save_atomic

MANIFESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "manifests")
TINY_VAE = ["--vae_dim", "4", "--vae_dec_dim", "4"]
TINY_DIT = ["--dit_dim", "32", "--dit_ffn_dim", "64", "--dit_heads", "2", "--dit_layers", "2"]
CROP = slice(96, 160)  # 64x64 around the frame centre, where the test objects move


def scene(color, shape, vx, vy, background=("solid", ["black"]), frames=5):
    return Scene.from_dict({"frames": frames, "background": {"kind": background[0], "colors": background[1]},
                            "objects": [{"shape": shape, "color": color, "size": 40.0, "x0": 128.3, "y0": 127.6,
                                         "vx": vx, "vy": vy}]})


@pytest.fixture(scope="module")
def clips():
    """Two 5-frame clips cropped to 64x64: uint8 frames [2, 5, 64, 64, 3]."""
    scenes = [scene("red", "circle", 2.5, -1.0), scene("cyan", "triangle", -1.5, 2.0, ("split", ["navy", "white"]))]
    return render_batch(scenes)[:, :, CROP, CROP].contiguous()


def tiny_args(*extra):
    return build_parser().parse_args(["--stage", "dit", "--out_dir", "unused", *TINY_DIT, *extra])


# ---------------------------------------------------------------------------- VAE stage
def test_vae_steps_reduce_the_loss_on_a_fixed_batch(clips):
    torch.manual_seed(0)
    vae = build_vae(4, 4, seed=0)
    video, weight = to_model_video(clips), torch.ones(2, 1, 5, 64, 64)

    def deterministic_loss():
        with torch.no_grad():
            return float(reconstruction_loss(vae.decode(posterior(vae, video)[0], UNNORMALISED), video, weight))

    before = deterministic_loss()
    optimizer = make_optimizer(vae_param_groups(vae, 0.0), 3e-3)
    generator = torch.Generator().manual_seed(0)
    with unfused_norms():
        for _ in range(10):
            loss, _, _ = vae_loss(vae, video, weight, generator, kl_weight=1e-4)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert deterministic_loss() < 0.7 * before


def test_rms_norm_gains_get_gradients_even_where_the_fused_path_would_run(clips):
    """On CUDA norm_silu's fused kernel detaches the gains; the trainer swaps in the plain form.
    fused=True asks for the fused route explicitly (it is what the GPU takes by default)."""
    original = vae_blocks.norm_silu
    vae = build_vae(4, 4, seed=1)
    with unfused_norms():
        loss, _, _ = vae_loss(vae, to_model_video(clips), torch.ones(1), torch.Generator().manual_seed(0), 1e-4)
        loss.backward()
        norm = vae.decoder.head[0]
        norm.gamma.grad = None
        vae_blocks.norm_silu(norm, torch.randn(1, norm.gamma.shape[0], 2, 4, 4), fused=True).sum().backward()
        assert norm.gamma.grad is not None and norm.gamma.grad.abs().sum() > 0
    assert vae_blocks.norm_silu is original
    gains = {name: p.grad for name, p in vae.named_parameters() if name.endswith("gamma")}
    assert len(gains) > 10
    assert [name for name, grad in gains.items() if grad is None or grad.abs().sum() == 0] == []


def test_folding_the_statistics_is_exact_through_the_official_wrapper(clips, tmp_path):
    vae = build_vae(4, 4, seed=2).eval()
    video = to_model_video(clips)
    with torch.no_grad():
        mu = vae.encode(video, UNNORMALISED)
        decoded = vae.decode(mu, UNNORMALISED).clamp(-1, 1)
    mean, std = latent_statistics(vae, clips, batch=1, device="cpu")
    expected = (mu - mean.float().view(1, -1, 1, 1, 1)) / std.float().view(1, -1, 1, 1, 1)
    fold_latent_statistics_(vae, mean, std)
    path = str(tmp_path / "folded.pth")
    torch_save_atomic(vae.state_dict(), path)
    wrapper = Wan2_2_VAE(vae_pth=path, device="cpu")  # normalises with the official MEAN / STD
    with torch.no_grad():
        unit = torch.stack(wrapper.encode(list(video)))
        torch.testing.assert_close(unit, expected, atol=2e-5, rtol=1e-4)
        channel_mean, channel_std = unit.mean(dim=(0, 2, 3, 4)), unit.std(dim=(0, 2, 3, 4), correction=0)
        torch.testing.assert_close(channel_mean, torch.zeros(48), atol=1e-4, rtol=0)
        torch.testing.assert_close(channel_std, torch.ones(48), atol=1e-4, rtol=0)
        torch.testing.assert_close(torch.stack(wrapper.decode(list(unit))), decoded, atol=1e-4, rtol=1e-4)


def test_collapsed_latent_channels_are_not_blown_up_to_unit_std():
    std, collapsed = floor_collapsed(torch.tensor([1.0, 0.8, 1e-4, 1.2, 0.9]))
    assert collapsed == 1 and std.tolist() == pytest.approx([1.0, 0.8, 0.045, 1.2, 0.9])


# ---------------------------------------------------------------------------- DiT stage
def test_flow_objective_puts_t0_on_first_frame_tokens_and_scores_no_loss_there():
    sigma, image = torch.tensor([0.5, 0.25]), torch.tensor([True, False])
    t = token_timesteps(sigma, image, tokens=3 * 4, first_frame_tokens=4)
    assert t[0, :4].tolist() == [0.0] * 4 and t[0, 4:].tolist() == [500.0] * 8
    assert t[1].tolist() == [250.0] * 12

    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 48, 3, 4, 4, generator=generator), torch.randn(2, 48, 3, 4, 4, generator=generator)
    noisy = noisy_latents(x0, noise, sigma, image, blend=torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(noisy[0, :, 0], x0[0, :, 0])  # the image frame stays clean
    torch.testing.assert_close(noisy[1], 0.75 * x0[1] + 0.25 * noise[1])
    torch.testing.assert_close(noisy[0, :, 1:], 0.5 * x0[0, :, 1:] + 0.5 * noise[0, :, 1:])
    blended = noisy_latents(x0, noise, sigma, image, blend=torch.tensor([0.04, 0.0]))
    torch.testing.assert_close(blended[0, :, 0], 0.98 * x0[0, :, 0] + 0.02 * noise[0, :, 0])

    prediction = noise - x0 + 0.1 * torch.randn(x0.shape, generator=generator)
    loss = flow_matching_loss(prediction, x0, noise, image)
    planted = prediction.clone()
    planted[0, :, 0] += 5.0  # frame 0 of the image-conditioned sample: not scored
    assert flow_matching_loss(planted, x0, noise, image) == loss
    for sample, frame in ((0, 1), (1, 0)):  # a later frame, or frame 0 of the text-only sample
        planted = prediction.clone()
        planted[sample, :, frame] += 5.0
        assert flow_matching_loss(planted, x0, noise, image) > loss + 1.0


def test_batched_forward_equals_the_list_api():
    model = build_dit(0, dim=32, ffn_dim=64, num_heads=2, num_layers=2)
    torch.nn.init.normal_(model.head.head.weight, std=0.1)  # the official init zeroes the head
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(3, 48, 2, 4, 4, generator=generator)
    lengths = (5, 9, 7)
    context = torch.zeros(3, 512, 64)
    for row, length in enumerate(lengths):
        context[row, :length] = torch.randn(length, 64, generator=generator)
    t = token_timesteps(torch.tensor([0.3, 0.7, 0.9]), torch.tensor([True, False, True]), 8, 4)
    with torch.no_grad():
        batched = predict_velocity(model, latents, t, context)
        listed = model(list(latents), t, [c[:n] for c, n in zip(context, lengths)], seq_len=8)
    assert batched.abs().mean() > 0.01
    torch.testing.assert_close(batched, torch.stack(listed), atol=1e-6, rtol=1e-5)


def test_official_init_zeroes_the_head_and_biases():
    model = build_dit(0, dim=32, ffn_dim=64, num_heads=2, num_layers=2)
    assert model.head.head.weight.abs().sum() == 0
    assert all(m.bias.abs().sum() == 0 for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert 0.01 < model.text_embedding[0].weight.std() < 0.03
    assert build_dit(0, dim=32, ffn_dim=64, num_heads=2, num_layers=2).state_dict().keys() == model.state_dict().keys()


def test_dit_steps_reduce_the_loss_on_a_fixed_batch():
    args = tiny_args("--dit_lr", "1e-2", "--dit_final_lr", "1e-2")
    generator = torch.Generator().manual_seed(0)
    data = LatentSet(torch.randn(4, 48, 2, 4, 4, generator=generator),
                     torch.randn(4, 2, 6, 64, generator=generator).to(torch.bfloat16))
    negative = torch.zeros(512, 64, dtype=torch.bfloat16)
    model = build_dit(0, args.dit_dim, args.dit_ffn_dim, args.dit_heads, args.dit_layers)
    before = held_out_losses(model.eval(), data, negative, "cpu", seed=5)
    trainer = DitTrainer(model.train(), None, args, "cpu", warmup_steps=1, first_step=0, seed=3)
    for step in range(30):
        trainer.step(data, 4, negative, step, 0.0)
    after = held_out_losses(model.eval(), data, negative, "cpu", seed=5)
    assert sum(after.values()) < 0.9 * sum(before.values())
    assert all(torch.equal(e, p) for e, p in zip(trainer.ema, model.parameters()))  # before ema_start


def test_a_compiler_failure_falls_back_to_eager_training(caplog):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("this compiler cannot build the block")

    args = tiny_args("--dit_compile", "blocks")
    generator = torch.Generator().manual_seed(0)
    data = LatentSet(torch.randn(2, 48, 2, 4, 4, generator=generator),
                     torch.randn(2, 2, 6, 64, generator=generator).to(torch.bfloat16))
    model = build_dit(0, args.dit_dim, args.dit_ffn_dim, args.dit_heads, args.dit_layers)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    for block in model.blocks:
        block.compile(backend=broken_backend)
    trainer = DitTrainer(model, None, args, "cpu", warmup_steps=1, first_step=0, seed=0)
    with caplog.at_level("WARNING", logger="wan.toyworld.train"):
        loss, _ = first_compiled_step(trainer, data, 2, torch.zeros(512, 64, dtype=torch.bfloat16), 0, 0.0, args)
    assert "training eagerly" in caplog.text and args.dit_compile == "none"
    assert torch.isfinite(loss) and all(block._compiled_call_impl is None for block in model.blocks)
    assert any(not torch.equal(v, reference[k]) for k, v in model.state_dict().items())  # the eager step trained


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dit_training_steps_never_wait_for_the_gpu():
    """The step is launch-bound at toy sizes: it must queue work without a host sync, also when
    the clip length changes from one step to the next."""
    from conftest import no_host_sync

    args = tiny_args()
    generator = torch.Generator("cuda").manual_seed(0)
    sets = {frames: LatentSet(torch.randn(8, 48, (frames - 1) // 4 + 1, 8, 8, generator=generator, device="cuda"),
                              torch.randn(8, 2, 6, 64, generator=generator, device="cuda").to(torch.bfloat16))
            for frames in (17, 33)}
    negative = torch.zeros(512, 64, dtype=torch.bfloat16, device="cuda")
    model = build_dit(0, args.dit_dim, args.dit_ffn_dim, args.dit_heads, args.dit_layers).cuda()
    trainer = DitTrainer(model, None, args, "cuda", warmup_steps=1, first_step=0, seed=0)
    for step, frames in enumerate((17, 33, 17, 33)):  # warm-up: allocator, kernels, RoPE tables
        trainer.step(sets[frames], 4, negative, step, 0.1)
    with no_host_sync():
        for step, frames in enumerate((17, 33, 33, 17), start=4):
            loss, _ = trainer.step(sets[frames], 4, negative, step, 0.2)
    assert torch.isfinite(loss)


# ---------------------------------------------------------------------------- text encoder
def test_text_encoder_files_are_the_same_bits_for_the_same_seed(tmp_path):
    write_text_encoder(str(tmp_path / "a"), seed=0)
    write_text_encoder(str(tmp_path / "b"), seed=0)
    for name in ("models_t5_umt5-xxl-enc-bf16.pth", "google/umt5-xxl/tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_every_grammar_word_is_one_piece_and_special_ids_are_umt5s():
    tokenizer = build_caption_tokenizer()
    for word in grammar_words():
        assert tokenizer.tokenize(word) == ["\u2581" + word], word
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    negative = tokenizer(clean_text(WAN_CONFIGS["ti2v-5B"].sample_neg_prompt)).input_ids
    assert 2 not in negative and negative[-1] == 1


# ---------------------------------------------------------------------------- export
def manifest_keys(name, blocks):
    with open(os.path.join(MANIFESTS, name)) as f:
        keys = json.load(f)["keys"]
    kept = {k for k in keys if not re.match(r"blocks\.(\d+)\.", k) or int(k.split(".")[1]) < blocks}
    return kept


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("export"))
    write_text_encoder(folder, seed=0)
    save_vae_checkpoint(build_vae(4, 4, seed=1), os.path.join(folder, "Wan2.2_VAE.pth"))
    build_dit(2, dim=32, ffn_dim=64, num_heads=2, num_layers=2).to(torch.bfloat16).save_pretrained(folder)
    state = new_state(0)
    state["dit"] = {"steps": 3, "calls": 1}
    finish_export(folder, state)
    return folder


def test_export_is_the_official_layout_and_loads_like_ti2v_5b(exported):
    files = sorted(os.path.relpath(os.path.join(r, n), exported) for r, _, ns in os.walk(exported) for n in ns)
    assert files == ["README.md", "Wan2.2_VAE.pth", "config.json", "diffusion_pytorch_model.safetensors",
                     "google/umt5-xxl/tokenizer.json", "google/umt5-xxl/tokenizer_config.json",
                     "models_t5_umt5-xxl-enc-bf16.pth", "provenance.json"]
    dit = load_file(os.path.join(exported, "diffusion_pytorch_model.safetensors"))
    vae = torch.load(os.path.join(exported, "Wan2.2_VAE.pth"), weights_only=True)
    t5 = torch.load(os.path.join(exported, "models_t5_umt5-xxl-enc-bf16.pth"), weights_only=True)
    assert set(dit) == manifest_keys("wan22_ti2v_5b_dit.json", blocks=2)
    assert set(vae) == manifest_keys("wan22_vae.json", blocks=0)
    assert set(t5) == manifest_keys("umt5_xxl_encoder.json", blocks=2)
    assert {v.dtype for part in (dit, vae, t5) for v in part.values()} == {torch.bfloat16}

    provenance = json.load(open(os.path.join(exported, "provenance.json")))
    assert provenance["spec_version"] == "toyworld-v1" and provenance["training"]["dit"]["steps"] == 3
    assert set(provenance["files"]) == set(files) - {"provenance.json"}

    from wan import WanTI2V

    pipeline = WanTI2V(WAN_CONFIGS["ti2v-5B"], exported, device="cpu")
    video = pipeline.generate("a red circle on a black background.", size=(64, 64), frame_num=5, sampling_steps=2,
                              seed=0, offload_model=False)
    assert video.shape == (3, 5, 64, 64) and torch.isfinite(video).all()
    assert isinstance(pipeline.text_encoder, T5EncoderModel) and isinstance(pipeline.vae, Wan2_2_VAE)
    assert isinstance(pipeline.model, WanModel) and pipeline.model.text_dim == 64


# ---------------------------------------------------------------------------- the command line, resuming
CLI_VAE = ["--device", "cpu", *TINY_VAE, "--max_steps", "2", "--vae_image_share", "1", "--vae_image_batch", "1",
           "--vae_pool", "2", "--vae_refresh", "1", "--vae_stats_clips", "1", "--vae_eval_clips", "1",
           "--vae_eval_batch", "1"]
CLI_DIT_DATA = ["--device", "cpu", "--dit_batch", "2", "--dit_clips", "2", "--dit_eval_clips", "1"]
CLI_DIT = [*CLI_DIT_DATA, *TINY_DIT, "--max_steps", "2"]


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory):
    """A VAE run, then a DiT run resumed from it (which exports)."""
    root = tmp_path_factory.mktemp("runs")
    vae_run, dit_run = str(root / "vae"), str(root / "dit")
    main(["--stage", "vae", "--out_dir", vae_run, *CLI_VAE])
    main(["--stage", "dit", "--out_dir", dit_run, "--resume", vae_run, *CLI_DIT])
    return vae_run, dit_run


def read_state(run):
    return json.load(open(os.path.join(run, "resume", "state.json")))


def test_stages_chain_and_write_resume_shards_under_16_mib(trained_runs):
    vae_run, dit_run = trained_runs
    assert read_state(vae_run)["vae"]["steps"] == 2 and read_state(vae_run)["dit"] == {}
    state = read_state(dit_run)
    assert state["vae"]["steps"] == 2 and state["dit"]["steps"] == 2 and state["spec_version"] == "toyworld-v1"
    assert os.path.isfile(os.path.join(dit_run, "resume", "dit_fp32.safetensors"))
    assert os.path.isfile(os.path.join(vae_run, "resume", "vae_fp32.safetensors"))
    WanModel.from_pretrained(os.path.join(dit_run, "checkpoint"))


def test_resume_continues_from_a_run_folder_and_from_an_export(trained_runs, tmp_path):
    _, dit_run = trained_runs
    raw = load_file(os.path.join(dit_run, "resume", "dit_fp32.safetensors"))
    for source in (dit_run, os.path.join(dit_run, "checkpoint")):
        target = str(tmp_path / os.path.basename(source))
        # No size arguments: a resumed DiT keeps the size in its config.json.
        main(["--stage", "dit", "--out_dir", target, "--resume", source, *CLI_DIT_DATA, "--max_steps", "1"])
        state = read_state(target)
        assert (state["dit"]["steps"], state["dit"]["calls"], state["vae"]["steps"]) == (3, 2, 2)
        assert open(os.path.join(target, "checkpoint", "Wan2.2_VAE.pth"), "rb").read() == \
            open(os.path.join(dit_run, "checkpoint", "Wan2.2_VAE.pth"), "rb").read()
    resumed = load_file(os.path.join(str(tmp_path / "dit"), "resume", "dit_fp32.safetensors"))
    # One step at a warm-up lr moves the weights a little from the saved fp32 ones, not from a fresh init.
    assert max(float((resumed[k] - raw[k]).abs().max()) for k in raw) < 1e-2


@pytest.mark.parametrize("kind", ["run", "export"])
def test_resume_from_another_spec_version_is_a_one_line_error(trained_runs, tmp_path, capsys, kind):
    from wan.cli import run_cli

    source = str(tmp_path / "old")
    shutil.copytree(trained_runs[1], source)
    path = os.path.join(source, "resume", "state.json") if kind == "run" else \
        os.path.join(source, "checkpoint", "provenance.json")
    data = json.load(open(path))
    (data if kind == "run" else data["training"])["spec_version"] = "toyworld-v0"
    json.dump(data, open(path, "w"))
    resume = source if kind == "run" else os.path.join(source, "checkpoint")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv=["--stage", "dit", "--out_dir", str(tmp_path / "new"), "--resume", resume, *CLI_DIT])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "toyworld-v0" in err[0] and "toyworld-v1" in err[0]


def test_dit_stage_without_a_vae_is_a_clear_error(tmp_path):
    with pytest.raises(WanInputError, match="run the vae stage first"):
        main(["--stage", "dit", "--out_dir", str(tmp_path / "empty"), *CLI_DIT])
