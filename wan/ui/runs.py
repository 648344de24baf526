"""One folder per UI run: the inputs it used (copied, so its settings file stays valid), its
outputs, the resolved settings and an HTML report (wan.report)."""
import datetime
import shutil
import uuid
from pathlib import Path

from ..report import Report, StageTimer
from ..utils.fileio import atomic_path, write_yaml_atomic


class RunFolder:
    """ROOT/<time>-<kind>-<id>/ with a StageTimer for the run's stages."""

    def __init__(self, root, kind, device=None):
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.path = Path(root).resolve() / f"{stamp}-{kind}-{uuid.uuid4().hex[:6]}"
        self.path.mkdir(parents=True)
        self.timer = StageTimer(device)

    def file(self, name):
        return str(self.path / name)

    def keep(self, path, stem):
        """Copy an input (an upload in Gradio's temporary folder) into the run as STEM + its suffix."""
        if not path:
            return None
        kept = self.path / f"{stem}{Path(path).suffix.lower()}"
        shutil.copyfile(path, kept)
        return str(kept)

    def write_settings(self, name, settings):
        """The settings as a YAML file (the configs/ format); returns its text."""
        path = self.file(name)
        write_yaml_atomic(path, settings)
        with open(path) as f:
            return f.read()

    def write_text(self, name, text):
        """A text file in the run (atomically); returns its path."""
        with atomic_path(self.path / name) as temp:
            temp.write_text(text)
        return self.file(name)

    def report(self, title, videos=(), images=(), prompts=None, settings=None, notes=None, plots=()):
        """report.html: videos [(path, caption)], images [(path, caption)], prompts {name: text},
        settings (a dict), notes (text), plots [(series, title, xlabel, ylabel)], timings, environment."""
        report = Report(title)
        report.section("Result")
        for path, caption in videos:
            report.video(path, caption)
        for path, caption in images:
            report.image(path, caption)
        for series, plot_title, xlabel, ylabel in plots:
            report.plot(series, plot_title, xlabel, ylabel, width=420, height=240)
        if notes:
            report.text(notes)
        report.section("Run")
        if prompts:
            report.prompts(prompts)
        if settings:
            report.settings(settings)
        report.timings(self.timer)
        report.environment()
        return report.write(self.file("report.html"))

