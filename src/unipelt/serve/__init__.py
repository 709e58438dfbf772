"""Serving many tasks on one backbone over HTTP: ``unipelt serve`` (docs/serving.md).

engine.py     the model side: a ``MultiTask``, its tokenizer, one mixed batch of rows -> answers
batcher.py    dynamic batching on the event loop (the local backend)
app.py        the FastAPI app, shared by both backends
server.py     uvicorn in one process, loopback only, graceful shutdown
ray_backend.py  the same app and engine as a Ray Serve deployment
cli.py        the ``serve`` subcommand's flags

Needs the ``serve`` extra (``pip install "unipelt[serve]"``); ``import unipelt`` never imports this.
"""

import importlib

__all__ = ["Engine", "Row", "ServeError", "TaskInfo", "TaskSpec"]


def __getattr__(name: str):
    """The engine's names, imported on first use: ``unipelt --help`` reads cli.py's flags
    without loading torch (PEP 562)."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.engine"), name)
