"""Training clips: scenes from the toy world's training distribution, rendered on the device in
batches (wan.toyworld.world.render_batch), never written to disk."""
import torch
import torch.nn.functional as F

from ...utils.video_io import to_model_range
from ..world import render_batch, sample_training_scene, with_frames

CLIP_FRAMES = 17
# Pixels an anti-aliased edge may move by in a reconstruction and still count as edge.
EDGE_DILATION = 2


def draw_scenes(rng, count, frames=None):
    """`count` training scenes (numpy Generator `rng`); with `frames`, all over that frame count."""
    scenes = [sample_training_scene(rng) for _ in range(count)]
    return scenes if frames is None else [with_frames(scene, frames) for scene in scenes]


def to_model_video(frames):
    """uint8 [B, F, H, W, 3] -> float [B, 3, F, H, W] in [-1, 1], as the pipelines convert frames."""
    video = to_model_range(frames.flatten(0, 1), device=frames.device)  # [3, B*F, H, W]
    return video.unflatten(1, frames.shape[:2]).transpose(0, 1)


def edge_mask(coverage):
    """Pixels near an object's anti-aliased edge: some object covers them partly (0 < alpha < 1),
    dilated by EDGE_DILATION pixels. coverage [B, F, objects, H, W] -> bool [B, F, H, W]."""
    partial = ((coverage > 0) & (coverage < 1)).any(dim=2).float()
    size = 2 * EDGE_DILATION + 1
    dilated = F.max_pool2d(partial.flatten(0, 1)[:, None], size, stride=1, padding=EDGE_DILATION)
    return dilated[:, 0].unflatten(0, partial.shape[:2]) > 0


def render_frames(scenes, device, chunk=32):
    """Render scenes that share a frame count, `chunk` at a time: uint8 frames [N, F, H, W, 3]."""
    return torch.cat([render_batch(scenes[start:start + chunk], device) for start in range(0, len(scenes), chunk)])


def render_with_edges(scenes, device, chunk=32):
    """Render scenes that share a frame count: (uint8 frames [N, F, H, W, 3], edges [N, F, H, W])."""
    frames, edges = [], []
    for start in range(0, len(scenes), chunk):
        video, coverage = render_batch(scenes[start:start + chunk], device, return_coverage=True)
        frames.append(video)
        edges.append(edge_mask(coverage))
    return torch.cat(frames), torch.cat(edges)


class ClipPool:
    """Rendered 17-frame clips kept on the device for the VAE stage. A batch is random windows of
    random clips, each flipped left-right with probability 1/2 (the mirror of a toy-world clip is a
    toy-world clip); `refresh` replaces the oldest clips with new ones, so the pool keeps moving
    through the training distribution while the GPU renders only a few clips per step."""

    def __init__(self, rng, size, device):
        self.rng, self.device = rng, torch.device(device)
        self.frames, self.edges = render_with_edges(draw_scenes(rng, size, CLIP_FRAMES), self.device)
        self.next_slot = 0

    def __len__(self):
        return len(self.frames)

    def refresh(self, count):
        if count <= 0:
            return
        frames, edges = render_with_edges(draw_scenes(self.rng, count, CLIP_FRAMES), self.device)
        slots = (self.next_slot + torch.arange(count, device=self.device)) % len(self)
        self.frames[slots], self.edges[slots] = frames, edges
        self.next_slot = (self.next_slot + count) % len(self)

    def batch(self, size, frames, generator, edge_weight):
        """(video [size, 3, frames, H, W] in [-1, 1], per-pixel loss weight [size, 1, frames, H, W]:
        `edge_weight` near edges, 1 elsewhere). `generator` lives on the pool's device."""
        draw = dict(generator=generator, device=self.device)
        clip = torch.randint(len(self), (size, 1), **draw)
        start = torch.randint(CLIP_FRAMES - frames + 1, (size, 1), **draw)
        time = start + torch.arange(frames, device=self.device)
        flip = torch.rand(size, **draw) < 0.5
        video, edges = self.frames[clip, time], self.edges[clip, time]
        video = torch.where(flip[:, None, None, None, None], video.flip(-2), video)
        edges = torch.where(flip[:, None, None, None], edges.flip(-1), edges)
        weight = 1 + (edge_weight - 1) * edges.float()
        return to_model_video(video), weight[:, None]
