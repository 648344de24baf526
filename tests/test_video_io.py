"""wan.utils.video_io: reading (decord and PyAV), writing, images, shared preprocessing.

Corner-case media are generated here in tmp folders; only the three small clips in tests/data are
stored (see tests/data/SOURCES.md).
"""
import json
import os
import struct
import subprocess
import sys
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from wan.errors import WanInputError
from wan.utils import video_io
from wan.utils.video_io import (frames_4n1, from_model_range, image_to_frames, load_image, probe_video,
                                read_video, resize_center_crop, sample_frame_indices, to_model_range,
                                write_video, write_video_streamed)

DATA = Path(__file__).parent / "data"
CASES = ["kitten-turning-head", "ballet", "rabbit-figurine"]


def pattern(height, width, index=0):
    """A smooth RGB test frame (gradients survive H.264 well) that changes with `index`."""
    y, x = np.mgrid[0:height, 0:width]
    red = x * 255 // max(width - 1, 1)
    green = y * 255 // max(height - 1, 1)
    blue = np.full_like(x, (40 + 20 * index) % 256)
    return np.stack([red, green, blue], -1).astype(np.uint8)


def encode(path, codec="libx264", pix_fmt="yuv420p", rate=10, num_frames=6, size=(48, 64), options=None,
           container_options=None):
    """Write a test clip with PyAV directly (independent of write_video)."""
    height, width = size
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width, stream.pix_fmt = height, width, pix_fmt
        stream.options = options or {}
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(pattern(height, width, i), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


# --------------------------------------------------------------------------------------------
# bundled clips


@pytest.mark.parametrize("case", CASES)
def test_bundled_clip_matches_case_json_on_both_decoders(case):
    meta = json.loads((DATA / case / "case.json").read_text())
    path = DATA / case / "source.mp4"
    frames, fps = read_video(path)
    width, height = meta["resolution"]
    assert frames.dtype == torch.uint8 and frames.is_contiguous()
    assert frames.shape == (meta["frames"], height, width, 3)
    assert fps == meta["fps"]
    assert probe_video(path) == (meta["frames"], meta["fps"], width, height)
    # decord and PyAV decode the same 8-bit stream to identical pixels
    pyav_frames, pyav_fps = read_video(path, backend="pyav")
    assert torch.equal(frames, pyav_frames) and pyav_fps == fps
    decord_frames, _ = read_video(path, backend="decord")
    assert torch.equal(frames, decord_frames)
    assert frames.float().std() > 20  # real content, not a blank decode


@pytest.mark.parametrize("case", ["kitten-turning-head", "ballet"])
def test_bundled_edited_frame_lines_up_with_frame_zero(case):
    frames, _ = read_video(DATA / case / "source.mp4", max_frames=1)
    edited = load_image(DATA / case / "edited_first_frame.png")
    assert edited.size == (frames.shape[2], frames.shape[1])
    assert frames.shape[0] == 1


# --------------------------------------------------------------------------------------------
# reading: backends, fallback, formats


@pytest.fixture
def clip(tmp_path):
    return encode(tmp_path / "clip.mp4", num_frames=9, options={"crf": "0"})


def test_fallback_when_decord_is_missing(clip, monkeypatch):
    expected, fps = read_video(clip, backend="decord")
    calls = []
    real_read_pyav = video_io._read_pyav
    monkeypatch.setattr(video_io, "_read_pyav", lambda *a: calls.append(a) or real_read_pyav(*a))
    monkeypatch.setitem(sys.modules, "decord", None)  # import decord -> ImportError
    frames, fallback_fps = read_video(clip)
    assert calls and torch.equal(frames, expected) and fallback_fps == fps
    with pytest.raises(ImportError):
        read_video(clip, backend="decord")


def test_fallback_when_decord_fails(clip, monkeypatch):
    import decord

    expected, _ = read_video(clip, backend="pyav")

    def broken_reader(*args, **kwargs):
        raise RuntimeError("decord could not open it")

    monkeypatch.setattr(decord, "VideoReader", broken_reader)
    frames, _ = read_video(clip)
    assert torch.equal(frames, expected)
    with pytest.raises(WanInputError, match="decord could not open it"):
        read_video(clip, backend="decord")


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_max_frames(clip, backend):
    frames, _ = read_video(clip, max_frames=4, backend=backend)
    full, _ = read_video(clip, backend=backend)
    assert frames.shape[0] == 4 and torch.equal(frames, full[:4])
    assert read_video(clip, max_frames=100, backend=backend)[0].shape[0] == 9


@pytest.mark.parametrize("codec, pix_fmt, rate, suffix, exact", [
    ("libx264", "yuv444p", Fraction(30000, 1001), ".mp4", True),
    ("libx264", "yuv420p10le", Fraction(25, 2), ".mp4", False),
    ("libx264rgb", "rgb24", 10, ".mp4", True),
    ("ffv1", "bgr0", 7, ".mkv", True),
])
def test_pixel_formats_and_odd_rates_decode_to_rgb8(tmp_path, codec, pix_fmt, rate, suffix, exact):
    options = {"qp": "0"} if codec.startswith("libx264") else {}
    path = encode(tmp_path / f"clip{suffix}", codec, pix_fmt, rate, num_frames=5, options=options)
    results = {backend: read_video(path, backend=backend) for backend in ("decord", "pyav")}
    for frames, fps in results.values():
        assert frames.dtype == torch.uint8 and frames.shape == (5, 48, 64, 3)
        assert fps == pytest.approx(float(rate))
        error = (frames[2].float() - torch.from_numpy(pattern(48, 64, 2)).float()).abs()
        assert error.mean() < 2.5  # right channel order and levels, only conversion rounding
    decord_frames, pyav_frames = results["decord"][0], results["pyav"][0]
    difference = (decord_frames.int() - pyav_frames.int()).abs()
    if exact:
        assert difference.max() == 0
    else:  # 10-bit 4:2:0: the two libraries' swscale chroma paths differ by a few levels
        assert difference.float().mean() < 2.0
    assert probe_video(path) == (5, pytest.approx(float(rate)), 64, 48)


def _fake_png(path):
    Image.new("RGB", (16, 16), "red").save(path, format="PNG")


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


@pytest.fixture(params=["missing", "empty", "text", "png", "jpeg", "truncated_moov_at_end",
                        "truncated_faststart", "no_video_stream", "folder"])
def bad_video(request, tmp_path):
    path = tmp_path / f"bad_{request.param}.mp4"
    kind = request.param
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a video\n" * 20)
    elif kind == "png":
        _fake_png(path)
    elif kind == "jpeg":
        Image.new("RGB", (16, 16), "blue").save(path, format="JPEG")
    elif kind.startswith("truncated"):
        options = {"movflags": "+faststart"} if kind.endswith("faststart") else None
        # lossless frames make a file big enough that half of it ends inside the frame data
        encode(path, num_frames=30, options={"crf": "0"}, container_options=options)
        _truncate(path)
    elif kind == "no_video_stream":  # an mp4 whose video track got zero frames
        ffmpeg = pytest.importorskip("imageio_ffmpeg").get_ffmpeg_exe()
        subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "color=c=red:s=64x48:r=10", "-frames:v", "0",
                        "-c:v", "libx264", str(path)], check=True)
    elif kind == "folder":
        path.mkdir()
    return path


@pytest.mark.parametrize("backend", ["auto", "pyav", "decord"])
def test_bad_videos_raise_one_line_error_naming_the_file(bad_video, backend):
    with pytest.raises(WanInputError) as info:
        read_video(bad_video, backend=backend)
    message = str(info.value)
    assert str(bad_video) in message and "\n" not in message


def test_probe_rejects_bad_videos(bad_video):
    if bad_video.name == "bad_truncated_faststart.mp4":
        pytest.skip("probe reads only the header, which survives this truncation; read_video catches it")
    with pytest.raises(WanInputError, match=str(bad_video.name)):
        probe_video(bad_video)


def test_edit_list_trim_is_not_mistaken_for_truncation(tmp_path):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    source = encode(tmp_path / "gop.mp4", num_frames=40, options={"g": "20", "keyint_min": "20"})
    trimmed = tmp_path / "trimmed.mp4"
    # a stream copy that starts between keyframes keeps the lead-in packets behind an edit list
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-ss", "1.05", "-i", str(source),
                    "-c", "copy", str(trimmed)], check=True)
    frames, _ = read_video(trimmed, backend="pyav")
    assert 20 < frames.shape[0] < 40  # the hidden lead-in frames are dropped, no truncation error


def test_probe_counts_packets_when_container_has_no_count(tmp_path):
    path = encode(tmp_path / "clip.mkv", "ffv1", "bgr0", 12, num_frames=7)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # Matroska states no frame count
    assert probe_video(path) == (7, 12.0, 64, 48)


# --------------------------------------------------------------------------------------------
# writing


def test_write_video_round_trip_array_tensor_generator(tmp_path):
    frames = np.stack([pattern(48, 64, i) for i in range(5)])
    inputs = {"np.mp4": frames, "torch.mp4": torch.from_numpy(frames), "gen.mp4": (f for f in frames)}
    for name, data in inputs.items():
        path = tmp_path / "nested" / "dir" / name
        assert write_video(data, path, fps=24, crf=0) == str(path)
        decoded, fps = read_video(path)
        assert fps == 24.0 and decoded.shape == (5, 48, 64, 3)
        assert (decoded.float() - torch.from_numpy(frames).float()).abs().mean() < 2.0
    assert sorted(os.listdir(tmp_path / "nested" / "dir")) == ["gen.mp4", "np.mp4", "torch.mp4"]


def test_write_video_fractional_fps(tmp_path):
    path = write_video(np.zeros((3, 16, 16, 3), np.uint8), tmp_path / "ntsc.mp4", fps=30000 / 1001)
    assert probe_video(path)[1] == pytest.approx(29.97, abs=1e-3)


def test_write_video_pads_odd_sizes_by_replication(tmp_path):
    frames = np.stack([pattern(33, 47, i) for i in range(3)])
    frames[:, -1, :, :] = 255  # a white last row must be repeated, not padded with black
    decoded, _ = read_video(write_video(frames, tmp_path / "odd.mp4", fps=8, crf=0))
    assert decoded.shape == (3, 34, 48, 3)
    assert decoded[:, -1].float().mean() > 240


def test_write_failure_mid_stream_leaves_no_file(tmp_path):
    good = pattern(32, 32)
    frames = [good, good, good, np.zeros((16, 16, 3), np.uint8)]  # fails at the fourth frame
    target = tmp_path / "clip.mp4"
    with pytest.raises(ValueError, match="frame 3"):
        write_video(frames, target, fps=8)
    assert os.listdir(tmp_path) == []
    # an existing file is left untouched by a failed rewrite
    write_video([good], target, fps=8)
    before = target.read_bytes()
    with pytest.raises(ValueError):
        write_video(frames, target, fps=8)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["clip.mp4"]


def test_streamed_write_equals_the_plain_write(tmp_path):
    frames = np.stack([pattern(48, 64, i) for i in range(7)])
    batches = (frames[i:i + 3] for i in range(0, 7, 3))  # 3 + 3 + 1 frames, as produced
    streamed, _ = read_video(write_video_streamed(batches, tmp_path / "streamed.mp4", fps=12, crf=0))
    plain, _ = read_video(write_video(frames, tmp_path / "plain.mp4", fps=12, crf=0))
    assert streamed.shape == (7, 48, 64, 3)
    assert (streamed.float() - plain.float()).abs().mean() < 0.5


def test_streamed_write_failure_on_either_side_leaves_no_file(tmp_path):
    good = np.stack([pattern(32, 32)] * 2)

    def producer_fails():
        yield good
        raise RuntimeError("decoder broke")

    with pytest.raises(RuntimeError, match="decoder broke"):
        write_video_streamed(producer_fails(), tmp_path / "a.mp4", fps=8)
    misshaped = [good, np.zeros((2, 16, 16, 3), np.uint8), good]  # the writer fails at frame 2
    with pytest.raises(ValueError, match="frame 2"):
        write_video_streamed(iter(misshaped), tmp_path / "b.mp4", fps=8)
    assert os.listdir(tmp_path) == []


def test_write_video_rejects_wrong_input(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(np.zeros((2, 16, 16, 3), np.float32), tmp_path / "a.mp4", fps=8)
    with pytest.raises(ValueError, match="no frames"):
        write_video(np.zeros((0, 16, 16, 3), np.uint8), tmp_path / "a.mp4", fps=8)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------
# images


def _png_rgb16(path, rgb16):
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one)."""
    height, width, _ = rgb16.shape

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def test_load_image_rgba_composites_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # fully transparent: white
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black: mid grey
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 0, 0)
    assert image.getpixel((1, 0)) == (255, 255, 255)
    assert all(abs(c - 127) <= 1 for c in image.getpixel((2, 0)))


def test_load_image_greyscale_palette_and_bilevel(tmp_path):
    Image.new("L", (3, 2), 77).save(tmp_path / "l.png")
    Image.new("LA", (3, 2), (0, 0)).save(tmp_path / "la.png")
    Image.new("1", (3, 2), 1).save(tmp_path / "one.png")
    palette = Image.new("P", (3, 2), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.save(tmp_path / "p.png")
    palette.save(tmp_path / "p_transparent.png", transparency=1)
    expected = {"l.png": (77, 77, 77), "la.png": (255, 255, 255), "one.png": (255, 255, 255),
                "p.png": (10, 200, 30), "p_transparent.png": (255, 255, 255)}
    for name, colour in expected.items():
        image = load_image(tmp_path / name)
        assert image.mode == "RGB" and image.size == (3, 2), name
        assert image.getpixel((1, 1)) == colour, name


def test_load_image_16_bit_scales_to_8_bit(tmp_path):
    grey = np.array([[0, 257 * 128, 65535]], np.uint16)
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    image = load_image(tmp_path / "grey16.png")
    assert [image.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]
    rgb16 = np.zeros((2, 2, 3), np.uint16)
    rgb16[0, 0] = 65535
    rgb16[0, 1] = (65535, 257 * 100, 0)
    image = load_image(_png_rgb16(tmp_path / "rgb16.png", rgb16))
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 0)) == (255, 100, 0)


def test_load_image_cmyk(tmp_path):
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(tmp_path / "white.jpg")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "red.tif")
    white = load_image(tmp_path / "white.jpg")
    assert white.mode == "RGB" and min(white.getpixel((4, 4))) >= 250
    assert load_image(tmp_path / "red.tif").getpixel((4, 4)) == (255, 0, 0)


def test_load_image_applies_exif_orientation(tmp_path):
    array = np.zeros((2, 4, 3), np.uint8)
    array[:, :2] = (255, 0, 0)
    array[:, 2:] = (0, 0, 255)
    source = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    source.save(tmp_path / "rotated.png", exif=exif)
    image = load_image(tmp_path / "rotated.png")
    assert image.size == (2, 4)
    assert np.array_equal(np.asarray(image), np.asarray(source.transpose(Image.Transpose.ROTATE_270)))


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "truncated"])
def test_load_image_errors_name_the_file(tmp_path, kind):
    path = tmp_path / f"{kind}.png"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not an image")
    elif kind == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        _truncate(path)
    with pytest.raises(WanInputError) as info:
        load_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------
# preprocessing


@pytest.mark.parametrize("width, height", [(32, 24), (96, 64), (53, 37), (20, 60)])
def test_resize_center_crop_frames_equal_pil_per_frame(width, height):
    frames = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 37, 53, 3), dtype=np.uint8))
    out = resize_center_crop(frames, width, height)
    assert out.dtype == torch.uint8 and out.shape == (3, height, width, 3)
    for i in range(3):
        reference = resize_center_crop(Image.fromarray(frames[i].numpy()), width, height)
        assert reference.size == (width, height)
        assert np.array_equal(out[i].numpy(), np.asarray(reference))
    assert torch.equal(resize_center_crop(frames.numpy(), width, height), out)


def test_resize_center_crop_rule():
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (50, 101, 3), dtype=np.uint8))
    # height already fits (scale 1): no resize, crop x from (101 - 50) // 2 = 25
    assert np.array_equal(np.asarray(resize_center_crop(image, 50, 50)), np.asarray(image)[:, 25:75])
    # scale = max(202/101, 60/50) = 2: LANCZOS to 202x100, crop y from (100 - 60) // 2 = 20
    expected = image.resize((202, 100), Image.LANCZOS).crop((0, 20, 202, 80))
    assert np.array_equal(np.asarray(resize_center_crop(image, 202, 60)), np.asarray(expected))


def test_model_range_round_trip():
    frames = torch.arange(256, dtype=torch.uint8).view(1, 16, 16, 1).expand(2, 16, 16, 3).contiguous()
    video = to_model_range(frames)
    assert video.shape == (3, 2, 16, 16) and video.dtype == torch.float32
    assert video.min() == -1 and video.max() == 1
    assert torch.equal(from_model_range(video), frames)
    assert to_model_range(frames, dtype=torch.bfloat16).dtype == torch.bfloat16
    out_of_range = torch.tensor([-5.0, -1.0, 1.0, 5.0]).view(1, 1, 1, 4).expand(3, 1, 1, 4)
    assert from_model_range(out_of_range)[0, 0, :, 0].tolist() == [0, 0, 255, 255]


def test_image_to_frames_matches_layout():
    image = Image.fromarray(pattern(12, 20))
    frames = image_to_frames(image)
    assert frames.shape == (1, 12, 20, 3) and torch.equal(frames[0], torch.from_numpy(pattern(12, 20)))


def test_sample_frame_indices():
    assert sample_frame_indices(16, 4) == [2, 6, 10, 14]
    assert sample_frame_indices(5, 5) == [0, 1, 2, 3, 4]
    for num_frames, count in [(81, 8), (49, 7), (33, 32), (1000, 3)]:
        indices = sample_frame_indices(num_frames, count)
        assert len(indices) == count
        assert all(a < b for a, b in zip(indices, indices[1:]))
        segment = num_frames / count
        for i, index in enumerate(indices):  # each index is a frame overlapping its own segment
            assert int(i * segment) <= index < (i + 1) * segment
    with pytest.raises(WanInputError, match="too short"):
        sample_frame_indices(3, 8)


def test_frames_4n1():
    assert [frames_4n1(n) for n in (1, 4, 5, 16, 17, 49, 80, 81)] == [1, 1, 5, 13, 17, 49, 77, 81]
    with pytest.raises(WanInputError):
        frames_4n1(0)
