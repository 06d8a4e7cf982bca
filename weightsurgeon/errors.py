"""The one exception type of the engine.

Every failure a user can cause or fix (bad input, a full disk, an interrupted run) is a
`SurgeonError` carrying a one-line message; `cli.py` turns it into ``error: ...`` and
exit code 1 in a single place.
"""


class SurgeonError(Exception):
    """A user-facing failure. ``str(err)`` is the one line printed after ``error:``."""

    def __init__(self, message: str) -> None:
        # Keep the contract "one line" even when a message is built from file contents.
        super().__init__(" ".join(str(message).split()))


class Interrupted(SurgeonError):
    """SIGINT or SIGTERM arrived while an operation was running."""
