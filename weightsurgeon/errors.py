"""The engine's exception types.

Every failure a user can cause or fix (bad input, a full disk) is a `SurgeonError`
carrying a one-line message; an interrupted run is an `Interrupted`. `cli.py` turns
either into ``error: ...`` and exit code 1 in a single place.
"""


class SurgeonError(Exception):
    """A user-facing failure. ``str(err)`` is the one line printed after ``error:``."""

    def __init__(self, message: str) -> None:
        # Keep the contract "one line" even when a message is built from file contents.
        super().__init__(" ".join(str(message).split()))


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived while an operation was running.

    A BaseException, as KeyboardInterrupt is, on purpose: the signal handler raises it
    between any two bytecodes, and an ``except Exception`` fallback below (a best-effort
    figure) must not swallow it and carry on.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
