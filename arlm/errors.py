"""The one exception type for mistakes a user can fix.

Library code raises :class:`UserError` with a message that says what was wrong and how to fix it;
the CLI prints that message on one line and exits with status 2 (no traceback). Internal invariants
use ``assert`` instead, so a real bug still shows its traceback.
"""


class UserError(Exception):
    """Bad input from the user: a file, a flag, a config value, a prompt."""
