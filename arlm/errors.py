"""The exception types for mistakes a user can fix, and for a failing environment.

Library code raises :class:`UserError` with a message that says what was wrong and how to fix it;
the CLI prints that message on one line and exits with status 2 (no traceback). It is a ValueError,
so code that calls arlm may catch either. A failure of the machine rather than of the input (disk
full, permission denied, out of memory) is :class:`EnvironmentFailure`, exit status 1. Internal
invariants use ``assert`` instead, so a real bug still shows its traceback.
"""


class UserError(ValueError):
    """Bad input from the user: a file, a flag, a config value, a prompt."""


class EnvironmentFailure(RuntimeError):
    """The machine could not do what was asked (no space left, no permission, no memory); the message
    names the path or resource."""
