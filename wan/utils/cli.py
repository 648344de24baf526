"""Shared command-line plumbing: logging setup and one-line errors instead of tracebacks."""
import argparse
import logging
import os
import sys

from ..errors import WanInputError


def setup_logging(rank=0):
    level = logging.INFO if rank == 0 else logging.ERROR
    logging.basicConfig(level=level, format="[%(asctime)s] %(levelname)s: %(message)s", stream=sys.stderr)


def run_cli(main, argv=None):
    """Run `main(argv)`; a WanInputError (bad flag, file or checkpoint) becomes one line on stderr
    and exit status 2. Set WAN_DEBUG=1 to see the traceback instead."""
    try:
        main(argv)
    except WanInputError as err:
        if os.environ.get("WAN_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def parse_size(text, flag="--size"):
    """'W*H' -> (W, H)."""
    try:
        width, height = (int(part) for part in text.lower().replace("x", "*").split("*"))
    except ValueError:
        raise WanInputError(f"{flag} must look like WIDTH*HEIGHT (e.g. 1280*704), got {text!r}") from None
    return width, height


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: the message and a pointer to --help, not the whole usage."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def add_speed_flags(parser):
    """Flags every generation script shares for speed / memory trade-offs."""
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the DiT blocks and the VAE decoder (same numerics up to rounding; "
                             "faster after a one-time compile)")
    parser.add_argument("--vae_dtype", default="fp32", choices=sorted(VAE_DTYPES),
                        help="VAE precision: fp32 (reference) or bf16 (faster, about 35+ dB PSNR to fp32)")
    parser.add_argument("--fp8", action="store_true",
                        help="inexact, opt-in: FP8 linear layers in the DiT blocks (Hopper; ~4%% output deviation "
                             "on random weights, 1.1x faster, half the linear-weight memory)")
    from ..modules.attention import BACKENDS

    parser.add_argument("--attention", choices=BACKENDS, default=None,
                        help="attention kernel: sdpa (cuDNN first on CUDA), flash (FlashAttention-3, or 2) or "
                             "flash-fp8 (inexact, opt-in: FlashAttention-3 with fp8 q/k/v, ~5%% deviation per "
                             "attention, 1.2-1.3x faster attention). Default: flash when FlashAttention-3 is "
                             "installed, else sdpa")
    parser.add_argument("--step_cache", type=float, default=0.0, metavar="THRESHOLD",
                        help="inexact, opt-in: skip the DiT blocks on steps whose input changed less than this "
                             "(accumulated relative L1, e.g. 0.05-0.2), reusing the last residual; 0: off")


VAE_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def vae_dtype(name):
    import torch

    return getattr(torch, VAE_DTYPES[name])
