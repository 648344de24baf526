"""A web UI (Gradio) for generation, inversion editing and continuation, on warm models.

    python -m wan.ui                      # the toy-world model (or a tiny random one), 127.0.0.1:7860
    python -m wan.ui --ckpt_dir ./Wan2.2-TI2V-5B --port 7861

- checkpoints.py: which checkpoint is served, its tasks and the page's starting values;
- studio.py: the engine without web code (Studio: warm models, one job at a time, run folders);
- runs.py: the per-run folder (inputs, outputs, settings file, HTML report);
- app.py: the Gradio page over a Studio; __main__.py: the command line.
See docs/UI.md.
"""
