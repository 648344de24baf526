"""The run options every generation script shares: --profile (a stage table and a profiler trace),
--deterministic, and --offload_model blocks (the official yes/no values still work)."""
import json
import os

import pytest

import generate
from conftest import run_script
from wan.cli import offload_value
from wan.settings import LoadOptions, SettingsError


def test_profile_writes_a_trace_of_denoising_steps_and_the_stage_table(tiny_checkpoint, tmp_path):
    out, folder = tmp_path / "out.mp4", tmp_path / "profile"
    result = run_script("generate.py", "--task", "ti2v-5B", "--ckpt_dir", tiny_checkpoint("ti2v-5B"), "--size", "64*64",
                        "--frame_num", "5", "--sample_steps", "5", "--save_file", str(out), "--device", "cpu",
                        "--profile", str(folder), "--deterministic")
    assert result.returncode == 0, result.stderr[-2000:]
    stages = json.load(open(folder / "stages.json"))
    assert [row["stage"] for row in stages["stages"]] == ["load", "encode", "denoise", "decode and write"]
    assert stages["traced"] and os.path.getsize(folder / "trace.json") > 1000
    trace = json.load(open(folder / "trace.json"))
    assert any("aten::" in event.get("name", "") for event in trace["traceEvents"])
    assert "time per stage" in result.stderr


def test_offload_model_takes_the_official_values_and_blocks():
    assert offload_value("yes") is True and offload_value("False") is False and offload_value("blocks") == "blocks"
    assert LoadOptions(offload_model="blocks").offload_model == "blocks"
    with pytest.raises(SettingsError, match="offload_model must be true or false"):
        LoadOptions(offload_model="sometimes")
    parsed = generate.parse_args(["--offload_model", "blocks"])
    assert parsed.settings["load"]["offload_model"] == "blocks"
