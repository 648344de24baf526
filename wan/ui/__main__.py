"""Serve the web UI: `python -m wan.ui [--ckpt_dir DIR] [--host 127.0.0.1] [--port 7860] ...`

Without --ckpt_dir the toy-world model (assets/toyworld-ti2v) is served, or, while it does not
exist, a tiny random checkpoint built under --out_dir. Models load once, before the page opens."""
import logging

from ..cli import build_parser, load_options, option, parse, run_cli, setup_logging
from ..settings import LoadOptions, integer

MULTI_GPU = ("load.ulysses_size", "load.t5_fsdp", "load.dit_fsdp", "load.cfg_parallel")
OPTIONS = [
    option("--host", "host", help="interface to serve on (default 127.0.0.1: this machine only; 0.0.0.0: every "
                                  "interface, reachable by anyone on the network)"),
    option("--port", "port", type=int, help="port (default 7860)"),
    option("--ckpt_dir", "ckpt_dir", help="checkpoint directory (official layout); default: the toy-world model, or "
                                          "a tiny random checkpoint while it is missing"),
    option("--out_dir", "out_dir", help="folder for the run folders, the inversion cache and toy scenes "
                                        "(default ./ui_outputs)"),
    option("--vlm_path", "load.vlm_path", help="a captioner checkpoint folder (InternVL3.5 -HF, Qwen2.5-VL, "
                                               "Qwen3-VL) for the Continue tab"),
    option("--vlm_device", "load.vlm_device", help="device of the captioner (default: --device)"),
    option("--prompt_extend_model", "prompt_extend_model",
           help="a local prompt-extension model folder (Qwen2.5 text or Qwen-VL): adds an Extend prompt button"),
    option("--qwen_model", "qwen_model",
           help="a Qwen-Image-Edit-2509 folder (diffusers layout): adds the Qwen TTLG tab"),
    option("--qwen_dtype", "qwen_dtype", choices=("auto", "fp16", "bf16", "fp32"),
           help="dtype of the Qwen model (default auto: bf16 on CUDA, fp32 on the CPU)"),
    # one process: the multi-GPU options (torchrun) do not apply
    *(opt for opt in load_options() if opt.path not in MULTI_GPU),
]
DEFAULTS = {"host": "127.0.0.1", "port": 7860, "ckpt_dir": None, "out_dir": "ui_outputs", "prompt_extend_model": None,
            "qwen_model": None, "qwen_dtype": "auto", "load": {"offload_model": False}}

log = logging.getLogger("wan.ui")


def main(argv=None):
    setup_logging()
    settings = parse(build_parser(__doc__.split("\n\n")[0], OPTIONS), OPTIONS, DEFAULTS, argv).settings
    port = integer("port", settings["port"], low=1, high=65535)
    load = LoadOptions.from_dict(settings["load"], "load")
    from .app import launch  # gradio loads only once the flags are fine
    from .checkpoints import resolve_checkpoint
    from .studio import Studio

    checkpoint = resolve_checkpoint(settings["ckpt_dir"], settings["out_dir"])
    log.info("serving %s (%s): %s", checkpoint.path, checkpoint.kind, ", ".join(checkpoint.tasks))
    studio = Studio(checkpoint, settings["out_dir"], load, settings["prompt_extend_model"], settings["qwen_model"],
                    settings["qwen_dtype"]).start()
    launch(studio, settings["host"], port)


if __name__ == "__main__":
    run_cli(main, OPTIONS)
