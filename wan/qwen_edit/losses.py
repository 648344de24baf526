"""Loss terms of test-time loss guidance and the per-frame metrics, on images [B, 3, H, W] in [-1, 1].

- edge: L1 between the normalised Sobel magnitude of the frame and a target edge map in [0, 1]
  (`normalised_edges` also makes the targets, so both sides come from the same operator);
- Gram: style statistics (Gram matrices) of feature maps against a reference frame's;
- temporal: Charbonnier distance to the previous output frame on 4x average-pooled images, so
  only low frequencies (flicker, colour drift) are penalised, not motion detail;
- perceptual distance for the metrics: LPIPS when a local torchvision trunk file is given, else
  the LPIPS "baseline" formula on the VAE encoder's feature maps (uncalibrated: comparable
  between runs of the same model, not with published LPIPS numbers).

Feature maps come from the Qwen-Image VAE encoder itself (forward hooks), which needs no extra
weights and works offline.
"""
import torch
import torch.nn.functional as F

from ..settings import SettingsError

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
LOSS_MAX_SIDE = 256  # edge/temporal losses run on frames pooled to at most this side
EDGE_NORM_FLOOR = 0.02  # Sobel/8 of a full black-white step is 0.5; a flat frame must not amplify noise
TEMPORAL_POOL = 4


def luma(image):
    """[-1, 1] RGB [B, 3, H, W] -> luma [B, 1, H, W] in [0, 1]."""
    weights = torch.tensor(LUMA_WEIGHTS, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return ((image + 1) / 2 * weights).sum(dim=1, keepdim=True)


def sobel_magnitude(gray):
    """Sobel gradient magnitude of [B, 1, H, W]; the epsilon keeps the gradient finite on flat areas."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=gray.dtype,
                      device=gray.device) / 8
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1)
    grads = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kernels)
    return torch.sqrt((grads ** 2).sum(dim=1, keepdim=True) + 1e-6)


def normalised_edges(image):
    """Edge map in [0, 1]: Sobel magnitude of the luma over its per-frame 99th percentile.

    Dividing by the (detached) percentile makes the map contrast-invariant, so a stylised frame
    and its source are compared on where the edges are, not on how strong they are."""
    magnitude = sobel_magnitude(luma(image))
    scale = torch.quantile(magnitude.flatten(1).float(), 0.99, dim=1).to(magnitude.dtype)
    scale = scale.detach().clamp_min(EDGE_NORM_FLOOR).view(-1, 1, 1, 1)
    return (magnitude / scale).clamp(0, 1)


def pool_to_max_side(image, max_side=LOSS_MAX_SIDE):
    height, width = image.shape[-2:]
    if max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    return F.interpolate(image, size=(max(1, round(height * scale)), max(1, round(width * scale))), mode="area")


def edge_loss(image, target_edges):
    """L1 between the frame's normalised edges and target edges [B, 1, H, W] in [0, 1]."""
    return F.l1_loss(normalised_edges(pool_to_max_side(image)), pool_to_max_side(target_edges))


def gram_matrix(features):
    """[B, C, H, W] -> [B, C, C], normalised by C * H * W so layers of any size weigh alike."""
    batch, channels = features.shape[:2]
    flat = features.reshape(batch, channels, -1)
    return flat @ flat.transpose(1, 2) / flat.shape[1] / flat.shape[2]


def gram_loss(features, reference_grams):
    """Mean over layers of the mean squared difference of Gram matrices."""
    terms = [F.mse_loss(gram_matrix(feat), ref) for feat, ref in zip(features, reference_grams)]
    return torch.stack(terms).mean()


def temporal_loss(image, previous):
    """Charbonnier distance between 4x average-pooled frames (low frequencies only)."""
    diff = F.avg_pool2d(pool_to_max_side(image), TEMPORAL_POOL) - F.avg_pool2d(pool_to_max_side(previous),
                                                                             TEMPORAL_POOL)
    return torch.sqrt(diff ** 2 + 1e-6).mean()


def feature_distance(features_a, features_b):
    """LPIPS' "baseline" formula: unit-normalise channels, squared difference summed over channels,
    spatial mean, uniform average over layers."""
    terms = []
    for a, b in zip(features_a, features_b):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        terms.append(((a - b) ** 2).sum(dim=1).mean(dim=(1, 2)))
    return torch.stack(terms).mean(dim=0)


class VaeEncoderFeatures:
    """Feature maps of the VAE encoder's down blocks, as float [B, C, h, w].

    Default layers: the last residual block of each resolution (before every downsample, and
    the last block), i.e. down_blocks 1, 4, 7, 10 of the real Qwen-Image VAE. Hooks exist only
    during a call, so the pipeline's own encodes are untouched."""

    def __init__(self, vae, layers=None):
        self.vae = vae
        self.layers = list(layers) if layers is not None else default_feature_layers(vae.encoder.down_blocks)

    def __call__(self, image):
        captured = []

        def keep(_module, _inputs, output):
            captured.append(output[:, :, 0].float())  # drop the time axis (one frame)

        blocks = self.vae.encoder.down_blocks
        hooks = [blocks[index].register_forward_hook(keep) for index in self.layers]
        try:
            self.vae.encode(image.unsqueeze(2).to(self.vae.dtype))
        finally:
            for hook in hooks:
                hook.remove()
        return captured


def default_feature_layers(down_blocks):
    from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageResample

    last = len(down_blocks) - 1
    return [index for index, block in enumerate(down_blocks)
            if not isinstance(block, QwenImageResample)
            and (index == last or isinstance(down_blocks[index + 1], QwenImageResample))]


class PerceptualMetric:
    """Perceptual distance between two frames: LPIPS with a local trunk file, else the VAE-feature
    baseline distance. `name` is the metrics column."""

    def __init__(self, vae_features, lpips_weights=None, lpips_net="alex", device="cpu"):
        self.vae_features = vae_features
        self.lpips = _load_lpips(lpips_weights, lpips_net, device) if lpips_weights else None
        self.name = "lpips" if self.lpips is not None else "vae_perceptual"

    @torch.no_grad()
    def __call__(self, image_a, image_b):
        if self.lpips is not None:
            return float(self.lpips(image_a.float(), image_b.float()).mean())
        return float(feature_distance(self.vae_features(image_a), self.vae_features(image_b)).mean())


def _load_lpips(weights_path, net, device):
    """lpips' linear heads (shipped in its wheel) on a torchvision trunk read from a local file."""
    try:
        import lpips
    except ImportError:
        raise SettingsError("lpips_weights", "needs the `lpips` package (and torchvision); install them or leave "
                                             "it out to report the VAE-feature distance") from None
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise SettingsError("lpips_weights", f"cannot be read ({weights_path}: "
                                             f"{' '.join(str(exc).split())[:200]})") from None
    model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    model.net.load_state_dict(_trunk_state_for_lpips(model.net.state_dict(), state, weights_path, net))
    return model.eval().to(device)


def _trunk_state_for_lpips(own_state, torchvision_state, weights_path, net):
    """lpips splits torchvision's `features.N` into slices that keep the index: `sliceK.N.*`."""
    mapped = {}
    for key in own_state:
        source = "features." + key.split(".", 1)[1]
        if source not in torchvision_state:
            raise SettingsError("lpips_weights", f"{weights_path} is not a torchvision {net} file (no {source})")
        mapped[key] = torchvision_state[source]
    return mapped
