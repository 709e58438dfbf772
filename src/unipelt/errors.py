"""The one exception type users catch: every bad input the library detects raises it."""


class UniPeltError(ValueError):
    """A user-facing error: the message says what was wrong and what to do instead."""
