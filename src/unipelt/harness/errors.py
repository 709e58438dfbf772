"""The harness's user-facing error: a ``UniPeltError`` so ``cli.main`` catches one type."""

from __future__ import annotations

from ..errors import UniPeltError


class HarnessError(UniPeltError):
    """Bad input to the experiment harness (data, grid, store): the message is one line that
    says what was wrong and where."""
