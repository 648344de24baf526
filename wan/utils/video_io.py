"""Video and image files in and out, and the frame preprocessing every task shares.

Conventions:
- Frames in memory are uint8 tensors [F, H, W, 3] (RGB); the model works on float [3, F, H, W]
  in [-1, 1] (`to_model_range` / `from_model_range`).
- Reading tries decord (fastest) and falls back to PyAV when decord is missing or fails. Any
  pixel format comes back as RGB8. Anything that is not a readable video raises WanInputError
  with a one-line message naming the file.
- Writing picks the format from the output path (`check_output_path` refuses anything else before
  a model loads): H.264 .mp4 or VP9 .webm (yuv420p through PyAV; yuv420p needs even sizes, so an
  odd width or height is padded by one replicated row/column), .gif, a folder of PNG frames (a
  path ending in /), or for a single frame a .png/.jpg image. Everything is written to a
  temporary name beside the output and renamed when complete (wan.utils.fileio.atomic_path), so an
  interrupted run never leaves a truncated file under the output's name.
- Images load as PIL RGB: transparency is composited onto white, 16-bit greyscale is scaled to
  8 bits, CMYK/palette/greyscale are converted, and the EXIF orientation is applied.
"""
import os
import queue
import re
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import WanInputError
from .fileio import OutputError, atomic_path

DEFAULT_CRF = 18


# --------------------------------------------------------------------------------------------
# reading video


def _check_file(path, what):
    path = Path(path)
    if not path.exists():
        raise WanInputError(f"{what} not found: {path}")
    if not path.is_file():
        raise WanInputError(f"{what} is not a file: {path}")
    if path.stat().st_size == 0:
        raise WanInputError(f"{what} is empty (0 bytes): {path}")
    return path


def _one_line(exc):
    """An exception as one short line: FFmpeg's reason without its errno, decord's without its log prefix."""
    text = getattr(exc, "strerror", None) or str(exc)
    text = re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", " ".join(text.split()))
    return text[:200] or type(exc).__name__


def _open_video_stream(container, path):
    """The first video stream of an opened container; rejects still images and audio-only files."""
    # FFmpeg happily opens a PNG or JPEG as a one-frame "video" through its image demuxers.
    if container.format.name == "image2" or container.format.name.endswith("_pipe"):
        raise WanInputError(f"not a video file (looks like an image, {container.format.name}): {path}")
    if not container.streams.video:
        raise WanInputError(f"no video stream in {path}")
    return container.streams.video[0]


def _stream_fps(stream, path):
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise WanInputError(f"cannot tell the frame rate of {path}")
    return float(rate)


def _decode_frames(container, stream, max_frames, path):
    """Decoded RGB frames and the number of non-empty packets the demuxer delivered."""
    frames, packets = [], 0
    for packet in container.demux(stream):
        packets += packet.size > 0
        for frame in packet.decode():
            frames.append(frame.to_ndarray(format="rgb24"))
            if frames[-1].shape != frames[0].shape:  # e.g. two streams of other sizes pasted together
                raise WanInputError(f"video changes size mid-stream: {path} frame {len(frames) - 1} is "
                                    f"{frames[-1].shape[1]}x{frames[-1].shape[0]}, frame 0 is "
                                    f"{frames[0].shape[1]}x{frames[0].shape[0]}")
            if max_frames is not None and len(frames) >= max_frames:
                return frames, packets
    return frames, packets


def _read_pyav(path, max_frames):
    try:
        with av.open(str(path)) as container:
            stream = _open_video_stream(container, path)
            stream.thread_type = "AUTO"
            fps = _stream_fps(stream, path)
            frames, packets = _decode_frames(container, stream, max_frames, path)
            declared = stream.frames
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        if isinstance(exc, WanInputError):
            raise
        raise WanInputError(f"cannot read video {path}: {_one_line(exc)}") from None
    if not frames:
        raise WanInputError(f"video has no decodable frames: {path}")
    # A file cut inside its frame data can decode without an error; its demuxer then runs out of
    # packets before the count in the header. (Decoded frames may legitimately be fewer than the
    # header's count: an edit list can trim frames, so compare packets, not frames.)
    if max_frames is None and packets < declared:
        raise WanInputError(f"video is truncated or corrupt: {path} declares {declared} frames, "
                            f"the file holds {packets}")
    return np.stack(frames), fps


def _read_decord(path, max_frames):
    import decord  # optional: no wheels for every platform

    # decord's demuxer would also take a PNG for a video; let PyAV's checks decide what a video is.
    with av.open(str(path)) as container:
        declared = _open_video_stream(container, path).frames
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    count = len(reader) if max_frames is None else min(len(reader), max_frames)
    if count == 0:
        raise WanInputError(f"video has no decodable frames: {path}")
    if max_frames is None and len(reader) < declared:  # as the PyAV reader decides (see _read_pyav)
        raise WanInputError(f"video is truncated or corrupt: {path} declares {declared} frames, "
                            f"the file holds {len(reader)}")
    frames = reader.get_batch(list(range(count))).asnumpy()
    return frames, float(reader.get_avg_fps())


def read_video(path, max_frames=None, backend="auto"):
    """Decode a video file to (uint8 tensor [F, H, W, 3] RGB, fps as float).

    max_frames: keep only the first frames. backend: "auto" (decord, then PyAV if decord is
    missing or fails), "decord" or "pyav". The two decoders give identical frames for 8-bit
    video; for 10-bit 4:2:0 their chroma upsampling differs by a few levels. Known differences:
    decord ignores mp4 edit lists (a clip trimmed without re-encoding comes back with its hidden
    lead-in frames; PyAV drops them), and neither applies rotation metadata.
    """
    if backend not in ("auto", "decord", "pyav"):
        raise ValueError(f"backend must be 'auto', 'decord' or 'pyav', got {backend!r}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    path = _check_file(path, "video")
    if backend != "pyav":
        try:
            frames, fps = _read_decord(path, max_frames)
            return torch.from_numpy(np.ascontiguousarray(frames)), fps
        except ImportError:
            if backend == "decord":
                raise
        except WanInputError:
            raise
        except Exception as exc:  # decord raises its own error types (and RuntimeError) on bad files
            if backend == "decord":
                raise WanInputError(f"cannot read video {path}: {_one_line(exc)}") from None
    frames, fps = _read_pyav(path, max_frames)
    return torch.from_numpy(frames), fps


def probe_video(path):
    """(num_frames, fps, width, height) from the container, decoding nothing when it states a count.

    Only the header is read, so a file cut inside its frame data (header intact) passes here and
    fails in read_video.
    """
    path = _check_file(path, "video")
    try:
        with av.open(str(path)) as container:
            stream = _open_video_stream(container, path)
            fps = _stream_fps(stream, path)
            width, height = stream.codec_context.width, stream.codec_context.height
            num_frames = stream.frames
            if num_frames == 0:  # e.g. Matroska stores no count: count packets, still no decoding
                num_frames = sum(1 for packet in container.demux(stream) if packet.size)
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        if isinstance(exc, WanInputError):
            raise
        raise WanInputError(f"cannot read video {path}: {_one_line(exc)}") from None
    if num_frames == 0:
        raise WanInputError(f"video has no frames: {path}")
    return num_frames, fps, width, height


def sample_frame_indices(num_frames, count):
    """`count` increasing frame indices at the centres of equal segments spanning the whole clip.

    Like InternVL's num_segments sampling: index i = floor((i + 1/2) * num_frames / count).
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if num_frames < count:
        raise WanInputError(f"clip too short: {count} frames requested, it has {num_frames}")
    return [((2 * i + 1) * num_frames) // (2 * count) for i in range(count)]


def frames_4n1(num_frames):
    """The largest 4n+1 not above num_frames (Wan VAEs take 4n+1 frames)."""
    if num_frames < 1:
        raise WanInputError(f"need at least 1 frame, got {num_frames}")
    return (num_frames - 1) // 4 * 4 + 1


# --------------------------------------------------------------------------------------------
# writing video

VIDEO_CODECS = {".mp4": ("mp4", "libx264"), ".webm": ("webm", "libvpx-vp9")}
IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
FRAME_FILE = "frame_{:05d}.png"  # the files of a PNG-frames output folder
FRAME_FILES = re.compile(r"^frame_\d{5}\.png$")
ACCEPTED_OUTPUTS = (".mp4 (H.264), .webm (VP9), .gif, a folder path ending in / (PNG frames), or for a "
                    "single frame .png, .jpg, .jpeg")
JPEG_QUALITY = 95


def output_kind(path):
    """What a path asks to be written as: "mp4", "webm", "gif", "image" or "frames" (a folder of
    PNGs, named by a path that ends in a slash). Anything else is a one-line WanInputError."""
    text = str(path)
    if text.endswith(("/", os.sep)):
        return "frames"
    suffix = os.path.splitext(text)[1].lower()
    if suffix in VIDEO_CODECS or suffix == ".gif":
        return suffix[1:]
    if suffix in IMAGE_SUFFIXES:
        return "image"
    raise WanInputError(f"cannot write {path}: {f'{suffix!r} is not' if suffix else 'no extension, so not'} an "
                        f"output type this toolkit writes; accepted: {ACCEPTED_OUTPUTS}")


def check_output_path(path, num_frames=None):
    """Refuse, before any model loads, an output this toolkit cannot write: an unknown extension,
    an image path for a video of more than one frame (`num_frames`), a folder in the way of a file
    (or a file, or a folder of other files, in the way of a PNG-frames folder), or a folder that
    cannot be created or written. Returns the output kind (see output_kind)."""
    kind = output_kind(path)
    if kind == "image" and num_frames is not None and num_frames > 1:
        raise WanInputError(f"cannot write {path}: an image path holds one frame, this run makes {num_frames}; "
                            "write a video (.mp4, .webm, .gif) or PNG frames (a folder path ending in /)")
    target = Path(str(path).rstrip("/" + os.sep) or ".")
    if kind == "frames":
        if target.exists() and not target.is_dir():
            raise OutputError(f"cannot write PNG frames into {path}: it is a file")
        if target.is_dir():
            others = [entry.name for entry in os.scandir(target) if not FRAME_FILES.match(entry.name)]
            if others:
                raise OutputError(f"cannot write PNG frames into {path}: the folder holds other files "
                                  f"({', '.join(sorted(others)[:3])}); give a new or empty folder")
    elif target.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    _check_writable(target.parent, path)
    return kind


def _check_writable(folder, path):
    """The nearest existing ancestor of `folder` must be a folder we can write into."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot write {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: no permission to write in {existing}")


def output_stem(path):
    """The output path without its extension (or trailing slash): where files written beside it go."""
    return os.path.splitext(str(path).rstrip("/" + os.sep))[0]


def probe_output(path):
    """(num_frames, fps or None, width, height) of anything write_video wrote."""
    kind = output_kind(path)
    if kind == "frames":
        files = sorted(p for p in Path(path).iterdir() if FRAME_FILES.match(p.name))
        if not files:
            raise WanInputError(f"no {FRAME_FILE.format(0)}... frames in {path}")
        return (len(files), None, *load_image(files[0]).size)
    if kind == "image":
        return (1, None, *load_image(path).size)
    return probe_video(path)


def _as_uint8_frame(frame, index):
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().cpu().numpy()
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame {index}: expected uint8 [H, W, 3], got {frame.dtype} {list(frame.shape)}")
    return frame


def _checked_frames(frames, path):
    """(index, uint8 [H, W, 3] frame) of every frame, all of one size; at least one."""
    size = None
    for index, frame in enumerate(frames):
        frame = _as_uint8_frame(frame, index)
        if size is None:
            size = frame.shape[:2]
        elif frame.shape[:2] != size:
            raise ValueError(f"frame {index} is {list(frame.shape[:2])}, earlier frames are {list(size)}")
        yield index, frame
    if size is None:
        raise ValueError(f"no frames to write to {path}")


def _pad_to_even(frame):
    """yuv420p halves the chroma planes, so both sizes must be even: replicate the last row/column."""
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return np.ascontiguousarray(frame)


def _codec_options(codec, crf):
    if codec == "libx264":
        return {"crf": str(crf)}
    # libvpx: constant quality needs a zero target bit rate. cpu-used 4 with row threads: 0.33 s for
    # 16 frames at 256x256 on 2 cores, against 1.1 s with libvpx's default effort (H.264: 0.1 s).
    return {"crf": str(crf), "b": "0", "row-mt": "1", "cpu-used": "4", "deadline": "good"}


def _encode(frames, temp, path, rate, suffix, crf):
    """H.264 in mp4 or VP9 in webm, yuv420p."""
    container_format, codec = VIDEO_CODECS[suffix]
    # bitexact: no random track ids (Matroska) or library version strings, so the same frames give
    # the same file.
    with av.open(str(temp), mode="w", format=container_format, container_options={"fflags": "+bitexact"}) \
            as container:
        stream = None
        for index, frame in _checked_frames(frames, path):
            frame = _pad_to_even(frame)
            if stream is None:
                stream = container.add_stream(codec, rate=rate)
                stream.height, stream.width = frame.shape[:2]
                stream.pix_fmt = "yuv420p"
                # x264 picks its thread count (one thread took 35 s for 121 frames at 1280x704
                # on the H200 host). Frame threads, not PyAV's default slice threads: 4.7 s
                # instead of 6.1 s for those frames as noise, 1.4 instead of 1.9 s for smooth
                # ones (16 cores). x264's output depends on its thread count (so on the machine's
                # core count) but not on timing: the same frames give the same file on one machine.
                stream.codec_context.thread_type = "FRAME"
                stream.options = _codec_options(codec, crf)
            # Convert to yuv420p here and stamp the frame: with PyAV's implicit conversion and no
            # timestamps, the same frames gave different files from run to run.
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
            video_frame.pts, video_frame.time_base = index, 1 / rate
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))


def _write_gif(frames, temp, path, rate):
    """An endlessly looping GIF, each frame with its own 256-colour palette (PIL's median cut).
    GIF stores delays in hundredths of a second, so 16 fps plays at 1 / 0.06 s = 16.7 fps."""
    images = [Image.fromarray(frame) for _, frame in _checked_frames(frames, path)]
    images[0].save(temp, format="GIF", save_all=True, append_images=images[1:], loop=0,
                   duration=round(1000 / float(rate)))


def _write_image(frames, temp, path):
    image_format = IMAGE_SUFFIXES[Path(path).suffix.lower()]
    for index, frame in _checked_frames(frames, path):
        if index:
            raise WanInputError(f"cannot write {path}: an image path holds one frame and this video has more; "
                                "write a video (.mp4, .webm, .gif) or PNG frames (a folder path ending in /)")
        options = {"quality": JPEG_QUALITY} if image_format == "JPEG" else {}
        Image.fromarray(frame).save(temp, format=image_format, **options)


def _write_frame_folder(frames, temp, path):
    temp.mkdir()
    for index, frame in _checked_frames(frames, path):
        Image.fromarray(frame).save(temp / FRAME_FILE.format(index), format="PNG")


def write_video(frames, path, fps, crf=DEFAULT_CRF):
    """Write RGB uint8 frames ([F, H, W, 3] tensor/array, or an iterable of [H, W, 3]) to `path`,
    in the format its extension names (see output_kind): H.264 mp4 or VP9 webm (yuv420p, constant
    quality `crf` on the encoder's own scale, odd sizes padded to even by replicating the last
    row/column), GIF, a folder of PNG frames, or one frame as a PNG/JPEG image. The file (or
    folder) appears at `path` only when complete, replacing any earlier one."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    kind = check_output_path(path)
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    rate = Fraction(fps).limit_denominator(10000)
    with atomic_path(path) as temp:
        if kind in ("mp4", "webm"):
            _encode(frames, temp, path, rate, f".{kind}", crf)
        elif kind == "gif":
            _write_gif(frames, temp, path, rate)
        elif kind == "image":
            _write_image(frames, temp, path)
        else:
            _write_frame_folder(frames, temp, path)
    return str(path)


_END, _ABORT = object(), object()


def _frames_until_end(frames):
    while (frame := frames.get()) is not _END:
        if frame is _ABORT:
            raise RuntimeError("the frames' producer failed")
        yield frame


def write_video_streamed(batches, path, fps, crf=DEFAULT_CRF):
    """write_video over frame batches ([f, H, W, 3] uint8 each) that are still being produced.

    The encoder runs in a worker thread (PyAV releases the GIL while x264 works), so producing the
    next batch, e.g. decoding it on the GPU, overlaps encoding the ones before. The file appears
    only when complete: an error on either side leaves none and is raised here."""
    frames = queue.SimpleQueue()  # unbounded: at worst it holds the whole video, as write_video would
    with ThreadPoolExecutor(max_workers=1) as pool:
        writing = pool.submit(write_video, _frames_until_end(frames), path, fps, crf)
        end = _ABORT
        try:
            for batch in batches:
                if writing.done():  # the writer failed: stop producing, its error is raised below
                    break
                for frame in batch:
                    frames.put(frame)
            end = _END
        finally:
            frames.put(end)
    return writing.result()


# --------------------------------------------------------------------------------------------
# images


def _sixteen_bit_to_8(image):
    """Greyscale 16-bit ("I;16*") or 32-bit integer ("I", from 16-bit files) to "L", 65535 -> 255."""
    values = np.asarray(image).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), mode="L")


def _to_rgb(image):
    if image.mode.startswith("I;16") or image.mode == "I":
        image = _sixteen_bit_to_8(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path):
    """Open an image file as an RGB PIL image (EXIF orientation applied, alpha composited on white)."""
    path = _check_file(path, "image")
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise WanInputError(f"cannot read image {path}: {_one_line(exc)}") from None


def image_to_frames(image):
    """PIL image -> uint8 tensor [1, H, W, 3], the frames layout used everywhere here."""
    return torch.from_numpy(np.array(image.convert("RGB")))[None]


# --------------------------------------------------------------------------------------------
# preprocessing shared by the tasks


def _resize_center_crop_image(image, width, height):
    scale = max(width / image.width, height / image.height)
    resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    left = (resized.width - width) // 2
    top = (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def resize_center_crop(image_or_frames, width, height):
    """TI2V-5B's rule: scale to cover (width, height) with LANCZOS, then crop the centre.

    scale = max(width / w, height / h); resize to (round(w * scale), round(h * scale)); crop at
    ((W - width) // 2, (H - height) // 2). Takes a PIL image (returns PIL) or uint8 frames
    [F, H, W, 3] (returns a uint8 tensor), each frame going through the very same PIL code so an
    edited first frame and the source frames line up pixel for pixel.
    """
    if isinstance(image_or_frames, Image.Image):
        return _resize_center_crop_image(image_or_frames, width, height)
    frames = image_or_frames
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"expected a PIL image or uint8 frames [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    out = [np.asarray(_resize_center_crop_image(Image.fromarray(frame), width, height)) for frame in frames]
    return torch.from_numpy(np.stack(out))


def to_model_range(frames, dtype=torch.float32, device=None):
    """uint8 frames [F, H, W, 3] -> float [3, F, H, W] in [-1, 1] (x / 255, minus 0.5, over 0.5)."""
    if not isinstance(frames, torch.Tensor):
        frames = torch.from_numpy(np.asarray(frames))
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[3] != 3:
        raise ValueError(f"expected uint8 frames [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    video = frames.to(device).permute(3, 0, 1, 2).float().div(255).sub(0.5).div(0.5)
    return video.to(dtype)


def from_model_range(video):
    """float [3, F, H, W] in [-1, 1] -> uint8 frames [F, H, W, 3], the exact inverse of to_model_range.

    Rounds to the nearest level so uint8 -> model range -> uint8 is lossless; save_video instead
    truncates, as the reference does, to match its files byte for byte.
    """
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a video [3, F, H, W], got {list(video.shape)}")
    unit = (video.detach().float().clamp(-1, 1) + 1) / 2
    return (unit * 255).round().to(torch.uint8).permute(1, 2, 3, 0).cpu()
