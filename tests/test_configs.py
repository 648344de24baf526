"""--config files: every preset in configs/ is valid for its script, flags override a file, and the
resolved settings written beside an output repeat the run bit for bit."""
import glob
import os

import pytest

import generate
import generate_continuous
import qwen_video_edit
import ti2v_inversion_edit
from conftest import DATA, REPO, run_script
from wan.cli import parse
from wan.settings import EditSettings, Generation, LoadOptions, SettingsError
from wan.tasks import check_inputs

KITTEN = os.path.join(DATA, "kitten-turning-head")
PRESETS = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))


def script_of(path):
    name = os.path.basename(path)
    for prefix, script in (("qwen_", qwen_video_edit), ("edit_", ti2v_inversion_edit),
                           ("chain_", generate_continuous)):
        if name.startswith(prefix):
            return script
    return generate


@pytest.mark.parametrize("path", PRESETS, ids=os.path.basename)
def test_every_preset_is_valid_for_its_script(path):
    script = script_of(path)
    if script is qwen_video_edit:
        args = qwen_video_edit.parse_args(["--config", path, "--init_frame", "k.png", "--edge_frames_dir", "e",
                                           "--out_frames_dir", "o"])
        assert args.command == "edit" and args.seed == 42 and args.ttlg_gram_scale == 0.3
        return
    parser = script.build_parser(script.__doc__.split("\n\n")[0], script.OPTIONS) if hasattr(script, "build_parser") \
        else None
    parsed = parse(parser, script.OPTIONS, getattr(script, "defaults", script.DEFAULTS), ["--config", path])
    assert parsed.given, "the preset sets nothing"
    LoadOptions.from_dict(parsed.settings["load"], "load")
    if script is ti2v_inversion_edit:
        EditSettings.from_dict({name: parsed.settings[name] for name in script.SETTINGS_FIELDS})
    else:
        generation = Generation.from_dict({name: parsed.settings.get(name) for name in script.GENERATION_FIELDS})
        for name, value in parsed.given.items():
            if name in ("sampling", "size", "frame_num", "task"):
                assert generation.to_dict()[name] is not None


def test_flags_override_a_config_file_and_unknown_keys_are_named(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("task: ti2v-5B\nsampling: {steps: 7, shift: 3.0}\nframe_num: 9\n")
    parsed = generate.parse_args(["--config", str(config), "--sample_steps", "4"])
    assert parsed.settings["sampling"] == {"solver": "unipc", "steps": 4, "shift": 3.0, "guide_scale": 5.0}
    assert parsed.settings["frame_num"] == 9 and parsed.settings["size"] == "1280*704"  # the task's default
    config.write_text("sampling: {stepz: 7}\n")
    with pytest.raises(SettingsError, match="'sampling.stepz' is not a setting of this script"):
        generate.parse_args(["--config", str(config)])
    result = run_script("generate.py", "--config", str(config))
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: --config ")


def test_image_tasks_need_their_image():
    with pytest.raises(SettingsError, match="image is required for i2v-A14B"):
        check_inputs(Generation(task="i2v-A14B"))


def test_resolved_settings_repeat_a_generation_bit_for_bit(tiny_checkpoint, tmp_path):
    first = tmp_path / "first.mp4"
    ok = run_script("generate.py", "--task", "ti2v-5B", "--ckpt_dir", tiny_checkpoint("ti2v-5B"), "--size", "64*64",
                    "--frame_num", "5", "--sample_steps", "2", "--image", os.path.join(KITTEN, "edited_first_frame.png"),
                    "--save_file", str(first), "--device", "cpu")
    assert ok.returncode == 0, ok.stderr[-2000:]
    resolved = tmp_path / "first.settings.yaml"
    assert "base_seed" not in resolved.read_text() and "seed:" in resolved.read_text()
    again = tmp_path / "again.mp4"
    ok = run_script("generate.py", "--config", str(resolved), "--save_file", str(again))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert first.read_bytes() == again.read_bytes()


def test_resolved_settings_repeat_an_edit_bit_for_bit(tiny_checkpoint, tmp_path):
    first = tmp_path / "first.mp4"
    ok = run_script("ti2v_inversion_edit.py", "--ckpt_dir", tiny_checkpoint("ti2v-5B"), "--video",
                    os.path.join(KITTEN, "source.mp4"), "--source_prompt", "a kitten", "--target_prompt", "a dog",
                    "--target_image", os.path.join(KITTEN, "edited_first_frame.png"), "--frame_num", "5",
                    "--inversion_steps", "2", "--generation_steps", "2", "--max_area", "4096", "--device", "cpu",
                    "--output", str(first))
    assert ok.returncode == 0, ok.stderr[-2000:]
    again = tmp_path / "again.mp4"
    ok = run_script("ti2v_inversion_edit.py", "--config", str(tmp_path / "first.settings.yaml"), "--output",
                    str(again))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert first.read_bytes() == again.read_bytes()
