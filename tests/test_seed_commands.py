"""The seeds' own commands, as their READMEs write them (paths swapped for tiny checkpoints): the chain
with its defaults and the InternVL captioner from the local Hugging Face cache, and the chain script."""
import os
import subprocess
import sys

import pytest

import generate_continuous
from conftest import DATA, REPO, run_script
from wan.modules.vlm import DEFAULT_CAPTIONER
from wan.tasks.continuation import PROMPTS_LOG, STITCHED_VIDEO

RABBIT = os.path.join(DATA, "rabbit-figurine", "source.mp4")
TINY = ["--num_videos", "2", "--frame_num", "9", "--size", "64*64", "--sample_steps", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory, tiny_vlm):
    """An HF_HOME whose cache holds the tiny InternVL under the seed's captioner id."""
    from wan.tools.tiny_formats import folder_files, write_hf_cache_repo

    home = tmp_path_factory.mktemp("hf_home")
    write_hf_cache_repo(str(home / "hub"), DEFAULT_CAPTIONER, folder_files(tiny_vlm("internvl")))
    return str(home)


def test_the_bare_chain_command_gets_the_seed_defaults():
    parsed = generate_continuous.parse(generate_continuous.build_parser("x", generate_continuous.OPTIONS),
                                       generate_continuous.OPTIONS, generate_continuous.defaults,
                                       ["--video", "input.mp4", "--ckpt_dir", "./Wan2.2-I2V-A14B"])
    s = parsed.settings
    assert (s["num_videos"], s["output_dir"], s["prompt"], s["task"]) == (12, "./continuous_outputs",
                                                                          "continue video", "v2v-14B")
    assert s["load"]["vlm_path"] == DEFAULT_CAPTIONER == "OpenGVLab/InternVL3_5-8B-HF"


def test_the_seed_chain_command_runs_with_the_cached_captioner(tiny_checkpoint, hf_home, tmp_path):
    out = tmp_path / "continuous_outputs"
    result = run_script("generate_continuous.py", "--video", RABBIT, "--ckpt_dir", tiny_checkpoint("i2v-A14B"),
                        "--output_dir", str(out), *TINY, env={"HF_HOME": hf_home})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = (out / PROMPTS_LOG).read_text().splitlines()
    assert len(lines) == 2 and all("\tprompt=continue video. " in line for line in lines)
    assert (out / STITCHED_VIDEO).exists()


def test_a_missing_captioner_is_a_one_line_error(tiny_checkpoint, tmp_path):
    result = run_script("generate_continuous.py", "--video", RABBIT, "--ckpt_dir", tiny_checkpoint("i2v-A14B"),
                        "--output_dir", str(tmp_path / "o"), *TINY, env={"HF_HOME": str(tmp_path / "empty")})
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and last.startswith("error: captioner OpenGVLab/InternVL3_5-8B-HF is not in the "
                                                      "local Hugging Face cache")
    assert not (tmp_path / "o").exists()


def test_generate_v2v_uses_the_cached_captioner_by_default(tiny_checkpoint, hf_home, tmp_path):
    out = tmp_path / "v2v.mp4"
    result = run_script("generate.py", "--task", "v2v-5B", "--ckpt_dir", tiny_checkpoint("ti2v-5B"), "--video", RABBIT,
                        "--size", "64*64", "--frame_num", "5", "--sample_steps", "1", "--save_file", str(out),
                        env={"HF_HOME": hf_home})
    assert result.returncode == 0 and out.exists(), result.stderr[-2000:]
    assert "captioning 8 frames" in result.stderr


def test_the_chain_shell_script(tiny_checkpoint, hf_home, tmp_path):
    env = dict(os.environ, HF_HOME=hf_home, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHON=sys.executable,
               NUM_VIDEOS="1", PYTHONPATH=REPO)
    out = tmp_path / "chain"
    result = subprocess.run(["bash", "scripts/continue_chain.sh", RABBIT, tiny_checkpoint("ti2v-5B"), str(out),
                             "--task", "v2v-5B", *TINY[2:]], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "chain: 1 videos" in result.stdout and (out / STITCHED_VIDEO).exists()
