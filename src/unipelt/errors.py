"""The one exception type users catch: every bad input the library detects raises it."""


class UniPeltError(ValueError):
    """A user-facing error: the message says what was wrong and what to do instead."""


class SharedInputError(UniPeltError):
    """A mixed batch asks a task to change an input every row shares (DeBERTa's relative-position
    projections): its rows can be answered in a batch of their own (the server does so)."""
