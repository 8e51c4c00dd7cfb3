"""The one exception the CLI turns into a clean one-line message instead of a traceback."""


class UserError(Exception):
    """Bad input or a bad setting: the message says what is wrong and how to fix it."""
