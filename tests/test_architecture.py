"""The architecture's promises, checked on the code itself: a script reaches the network in few
calls, and the library's errors name settings, not command-line flags (docs/ARCHITECTURE.md)."""
import ast
import os
import re
import traceback

import pytest

import generate
import ti2v_inversion_edit
from conftest import DATA, REPO
from wan.modules.model import WanModel

CLIP = os.path.join(DATA, "kitten-turning-head")


def calls_from_main_to_forward(run, monkeypatch):
    """The functions between a script's `main` and the first WanModel.forward it reaches."""
    chains, forward = [], WanModel.forward

    def recording_forward(self, *args, **kwargs):
        if not chains:
            frames = [f for f in traceback.extract_stack()[:-1]
                      if f.filename.startswith(REPO) and "site-packages" not in f.filename]  # not torch's
            names = [f"{os.path.relpath(f.filename, REPO)}:{f.name}" for f in frames]
            chains.append(names[max(i for i, n in enumerate(names) if n.endswith(":main")):])
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(WanModel, "forward", recording_forward)
    run()
    return chains[0]


@pytest.mark.parametrize("script", ["edit", "generate"])
def test_a_script_reaches_the_network_in_five_calls(script, tiny_checkpoint, tmp_path, monkeypatch):
    ckpt = tiny_checkpoint("ti2v-5B")
    if script == "edit":
        chain = calls_from_main_to_forward(lambda: ti2v_inversion_edit.main([
            "--ckpt_dir", ckpt, "--video", os.path.join(CLIP, "source.mp4"), "--source_prompt", "a kitten",
            "--target_prompt", "a dog", "--target_image", os.path.join(CLIP, "edited_first_frame.png"),
            "--frame_num", "5", "--max_area", "4096", "--inversion_steps", "2", "--generation_steps", "2",
            "--output", str(tmp_path / "edit.mp4")]), monkeypatch)
    else:
        chain = calls_from_main_to_forward(lambda: generate.main([
            "--task", "ti2v-5B", "--ckpt_dir", ckpt, "--prompt", "a fox", "--size", "64*64", "--frame_num", "5",
            "--sample_steps", "2", "--save_file", str(tmp_path / "video.mp4")]), monkeypatch)
    # main -> wan.runner.(edit|generate) -> flow.integrate -> stepper -> GuidedVelocity -> WanModel.forward
    assert len(chain) <= 5, chain
    assert chain[1] == f"wan/runner.py:{script}" and chain[2] == "wan/flow.py:integrate", chain


# Modules that are command-line programs themselves (their messages may name their flags).
CLI_MODULES = ("wan/cli.py", "wan/ui/__main__.py", "wan/toyworld/train.py", "wan/toyworld/demo.py")
FLAG = re.compile(r"(^|[\s`'\"(])--[a-z][a-z0-9_]+")


def error_texts(tree):
    """(line, text) of the string pieces inside every `raise` of a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            for piece in ast.walk(node.exc):
                if isinstance(piece, ast.Constant) and isinstance(piece.value, str):
                    yield node.lineno, piece.value


def test_library_errors_name_settings_not_flags():
    offenders = []
    for folder, _, files in os.walk(os.path.join(REPO, "wan")):
        for name in files:
            path = os.path.relpath(os.path.join(folder, name), REPO)
            if not name.endswith(".py") or path in CLI_MODULES or path.startswith("wan/tools/"):
                continue
            with open(os.path.join(REPO, path), encoding="utf-8") as f:
                tree = ast.parse(f.read())
            offenders += [f"{path}:{line}: {text!r}" for line, text in error_texts(tree) if FLAG.search(text)]
    assert not offenders, "\n".join(offenders)


def test_the_flag_scan_sees_a_flag_in_an_error():
    """The scan above would catch the kind of message it forbids."""
    planted = ast.parse('def f(x):\n    raise ValueError(f"--stride must be at least 1, got {x}")\n')
    assert [text for _, text in error_texts(planted) if FLAG.search(text)] == ["--stride must be at least 1, got "]
