"""User-facing errors.

Anything the user can fix (a bad setting, a missing file, a checkpoint with the wrong keys) raises
`WanInputError` with a one-line message naming the input and what was expected. A run that stops
because its numbers went bad raises `NonFiniteError`. Scripts catch both and print the message
without a traceback (see `wan.cli.run_cli`).
"""


class WanError(Exception):
    """An error whose message is shown to the user as is, in one line."""


class WanInputError(WanError, ValueError):
    """A bad input: setting, file, checkpoint or media."""


class CheckpointError(WanInputError):
    """A checkpoint file is missing, unreadable, or has the wrong keys or shapes."""


class NonFiniteError(WanError, FloatingPointError):
    """The latent or the velocity stopped being finite during an integration."""
