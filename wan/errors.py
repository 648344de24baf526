"""User-facing errors.

Anything the user can fix (a bad flag, a missing file, a checkpoint with the wrong keys) raises
`WanInputError` with a one-line message naming the input and what was expected. Scripts catch it
and print the message without a traceback (see `wan.utils.cli.run_cli`).
"""


class WanInputError(ValueError):
    """A bad input: flag, file, checkpoint or media. The message is shown to the user as is."""


class CheckpointError(WanInputError):
    """A checkpoint file is missing, unreadable, or has the wrong keys or shapes."""
