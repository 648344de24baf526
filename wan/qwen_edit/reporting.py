"""The run report of the frame editor: result video, init frame, per-frame TTLG losses, settings,
timings and environment, as one self-contained HTML page (wan.report)."""
from ..report import Report
from .workflow import LOSS_COLUMNS

INIT_CAPTION = "init frame (frame 0's previous output and style reference)"


def write_edit_report(path, title, videos, init_frame, rows, prompts, settings, timer):
    """videos: [(caption, mp4 path)]; rows: the per-frame metrics rows (dicts); prompts: name -> text;
    settings: the resolved settings (nested dicts allowed); timer: a StageTimer. Returns the path."""
    report = Report(title)
    report.section("Result")
    for caption, video in videos:
        report.video(video, caption)
    report.image(init_frame, INIT_CAPTION)
    report.section("Per frame")
    frames = [int(row["frame"]) for row in rows]
    for column in (*LOSS_COLUMNS, *_other_metrics(rows)):
        values = [row.get(column) for row in rows]
        report.plot({column: (frames, values)}, column.replace("_", " ") + " per frame", "frame", column,
                    width=420, height=240)
    report.table(rows, "metrics, measured on the saved frames")
    report.section("Run")
    report.prompts(prompts)
    report.settings(settings)
    report.timings(timer)
    report.environment()
    return report.write(path)


def _other_metrics(rows):
    """Per-frame columns beyond the losses and the frame number (the perceptual distance, seconds)."""
    columns = dict.fromkeys(key for row in rows for key in row)
    return [c for c in columns if c not in ("frame", *LOSS_COLUMNS)]
