"""``unipelt.compile``: torch.compile with the settings unipelt's modules are tested under."""

from __future__ import annotations

from torch import nn

from .inject import require_model


def compile(model: nn.Module, **options) -> nn.Module:  # noqa: A001 (unipelt.compile, as torch.compile)
    """Compile ``model``'s forward in place (``nn.Module.compile``) and return it.

    In place, so that ``unipelt.save``, ``merge``/``fold``, the Trainer and ``gate_values`` see the
    same module and the same parameter names as before; call ``merge``/``fold`` first when serving.
    ``dynamic=True`` by default: batches of varying length reuse one graph instead of compiling
    once per length. Other ``options`` go to ``torch.compile`` (``mode="reduce-overhead"`` uses CUDA
    graphs on a GPU, ``backend=...``). unipelt adds no graph break (tests/test_compile.py runs every
    preset with ``fullgraph=True``).

    What it gains depends on the device: on a GPU, where per-layer kernel launches set the time, the
    issue-30 measurement (H200, MiniLM-L6 shape, fp32; not repeated here) took a UniPELT-APL train
    step from 35.0 to 16.5 ms and LoRA's from 18.7 to 8.9 ms. On 2 CPU cores it gained nothing
    (docs/benchmarks.md).
    """
    require_model(model)
    model.compile(**{"dynamic": True, **options})
    return model
