"""wan.utils.utils: best_output_size, masks_like, save_video, str2bool, with the official call conventions."""
import argparse
import os

import pytest
import torch

from wan.utils.utils import _video_to_uint8_frames, best_output_size, masks_like, save_video, str2bool
from wan.utils.video_io import read_video

AREA = 704 * 1280


@pytest.mark.parametrize("size, expected", [
    ((1280, 720), (1248, 704)),
    ((720, 1280), (704, 1248)),
    ((1024, 1024), (960, 928)),
    ((640, 480), (1088, 800)),
    ((1280, 704), (1280, 704)),
])
def test_best_output_size_reference_examples(size, expected):
    assert best_output_size(*size, 32, 32, AREA) == expected


@pytest.mark.parametrize("w, h", [(1920, 1080), (480, 832), (333, 777), (4000, 100), (512, 512)])
@pytest.mark.parametrize("dw, dh, area", [(32, 32, AREA), (16, 16, 480 * 832), (32, 16, 256 * 256)])
def test_best_output_size_is_aligned_and_within_area(w, h, dw, dh, area):
    ow, oh = best_output_size(w, h, dw, dh, area)
    assert ow % dw == 0 and oh % dh == 0
    assert 0 < ow * oh <= area


def test_masks_like_without_zero_is_all_ones():
    latents = [torch.randn(4, 3, 2, 2), torch.randn(2, 5, 1, 3, dtype=torch.bfloat16)]
    out1, out2 = masks_like(latents)
    for u, v, x in zip(out1, out2, latents):
        assert u.shape == x.shape and u.dtype == x.dtype and u.device == x.device
        assert torch.equal(u, torch.ones_like(x)) and torch.equal(v, torch.ones_like(x))


def test_masks_like_zero_masks_latent_frame_zero():
    latent = torch.randn(48, 5, 4, 6)
    out1, out2 = masks_like([latent], zero=True)
    for mask in (out1[0], out2[0]):
        assert torch.all(mask[:, 0] == 0)
        assert torch.all(mask[:, 1:] == 1)


def test_masks_like_with_generator_statistics():
    generator = torch.Generator().manual_seed(0)
    latents = [torch.zeros(3, 4, 2, 2) for _ in range(2000)]
    out1, out2 = masks_like(latents, zero=True, generator=generator, p=0.2)
    masked = [i for i, v in enumerate(out2) if torch.all(v[:, 0] == 0)]
    assert abs(len(masked) / len(latents) - 0.2) < 0.03
    log_values = []
    for i, (u, v) in enumerate(zip(out1, out2)):
        assert torch.all(u[:, 1:] == 1) and torch.all(v[:, 1:] == 1)
        if i in masked:
            first = u[:, 0]
            assert torch.all(first == first.flatten()[0])  # one scalar for the whole frame
            log_values.append(first.flatten()[0].log().item())
        else:
            assert torch.all(u[:, 0] == 1) and torch.all(v[:, 0] == 1)
    log_values = torch.tensor(log_values)
    assert abs(log_values.mean().item() + 3.5) < 0.1
    assert abs(log_values.std().item() - 0.5) < 0.1


def test_masks_like_generator_is_reproducible():
    latents = [torch.zeros(2, 3, 1, 1) for _ in range(50)]
    first = masks_like(latents, zero=True, generator=torch.Generator().manual_seed(7))
    second = masks_like(latents, zero=True, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(first[0] + first[1], second[0] + second[1]))


def test_uint8_conversion_clamps_and_truncates_like_reference():
    video = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0]).view(1, 1, 1, 1, 6)
    frames = _video_to_uint8_frames(video, nrow=8, normalize=True, value_range=(-1, 1))
    # 0.0 -> 127.5 -> 127 and 0.5 -> 191.25 -> 191: truncation, not rounding; grey -> 3 channels
    assert frames.shape == (1, 1, 6, 3)
    assert frames[0, 0, :, 0].tolist() == [0, 0, 127, 191, 255, 255]
    assert torch.equal(frames[..., 0], frames[..., 2])


def test_grid_layout_matches_make_grid():
    colours = torch.tensor([-1.0, 0.0, 1.0])  # three clips of constant grey levels
    video = colours.view(3, 1, 1, 1, 1).expand(3, 3, 2, 4, 6)
    frames = _video_to_uint8_frames(video, nrow=2, normalize=True, value_range=(-1, 1))
    # two columns, two rows, 2 px border: width 2 + 2*(6+2), height 2 + 2*(4+2)
    assert frames.shape == (2, 14, 18, 3)
    tile_values = [frames[0, 2, 2, 0].item(), frames[0, 2, 10, 0].item(), frames[0, 8, 2, 0].item()]
    assert tile_values == [0, 127, 255]
    assert frames[0, 8, 10].tolist() == [0, 0, 0]  # the empty fourth cell stays black
    assert frames[0, 0].sum() == 0 and frames[0, :, 0].sum() == 0  # border


def test_save_video_round_trip(tmp_path):
    torch.manual_seed(0)
    # smooth content so H.264 at crf 10 reproduces it closely
    ramp = torch.linspace(-1, 1, 48).view(1, 1, 1, 1, 48)
    video = (ramp + torch.linspace(-0.3, 0.3, 9).view(1, 1, 9, 1, 1)).expand(1, 3, 9, 32, 48).clamp(-1, 1)
    target = tmp_path / "out" / "clip.mp4"
    assert save_video(video, str(target), fps=16) == str(target)
    frames, fps = read_video(target)
    assert frames.shape == (9, 32, 48, 3) and fps == 16.0
    expected = _video_to_uint8_frames(video, 8, True, (-1, 1))
    assert (frames.float() - expected.float()).abs().mean() < 2.0
    assert os.listdir(target.parent) == ["clip.mp4"]  # no temporary file left


def test_save_video_of_pieces_equals_the_whole(tmp_path):
    """Pieces along T (a chunked decode) write the same video as the concatenated tensor."""
    ramp = torch.linspace(-1, 1, 48).view(1, 1, 1, 1, 48)
    video = (ramp + torch.linspace(-0.3, 0.3, 9).view(1, 1, 9, 1, 1)).expand(1, 3, 9, 32, 48).clamp(-1, 1)
    whole, _ = read_video(save_video(video, str(tmp_path / "whole.mp4"), fps=16))
    pieces = (video[:, :, i:i + 4] for i in range(0, 9, 4))
    pieced, _ = read_video(save_video(pieces, str(tmp_path / "pieces.mp4"), fps=16))
    assert pieced.shape == whole.shape == (9, 32, 48, 3)
    assert (pieced.float() - whole.float()).abs().mean() < 0.5


def test_save_video_grid_size_on_disk(tmp_path):
    video = torch.zeros(3, 3, 5, 16, 16)
    frames, _ = read_video(save_video(video, str(tmp_path / "grid.mp4"), fps=8, nrow=2))
    assert frames.shape == (5, 2 + 2 * 18, 2 + 2 * 18, 3)


def test_save_video_default_name(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    path = save_video(torch.zeros(1, 3, 1, 16, 16), fps=24)
    assert path.startswith(str(tmp_path)) and path.endswith(".mp4") and os.path.getsize(path) > 0


def test_save_video_raises_instead_of_logging(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(OSError):
        save_video(torch.zeros(1, 3, 1, 16, 16), str(blocker / "clip.mp4"))
    with pytest.raises(ValueError):
        save_video(torch.zeros(3, 1, 16, 16), str(tmp_path / "clip.mp4"))
    assert sorted(os.listdir(tmp_path)) == ["not_a_folder"]


@pytest.mark.parametrize("text, expected", [
    ("yes", True), ("True", True), ("t", True), ("Y", True), ("1", True),
    ("no", False), ("FALSE", False), ("f", False), ("n", False), ("0", False),
])
def test_str2bool_values(text, expected):
    assert str2bool(text) is expected


def test_str2bool_with_argparse():
    parser = argparse.ArgumentParser()
    parser.add_argument("--offload_model", type=str2bool, default=None)
    assert parser.parse_args(["--offload_model", "False"]).offload_model is False
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool("maybe")
    with pytest.raises(SystemExit):
        parser.parse_args(["--offload_model", "maybe"])
