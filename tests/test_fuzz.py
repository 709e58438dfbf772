"""Property: whatever a checkpoint's unipelt.json holds, ``unipelt.load`` either loads it or
raises ``UniPeltError``; after a refusal the model and the checkpoint are exactly as before."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import build, randomize
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import unipelt
from unipelt import UniPeltError

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
# Where an edit lands: every level of the file; "*" is the first entry of a table.
PLACES = [
    "format",
    "unipelt_version",
    "sha256",
    "config",
    "config.methods",
    "config.methods.0",
    "config.methods.0.r",
    "config.methods.0.method",
    "config.methods.0.targets",
    "config.gate_pooling",
    "base_model",
    "base_model.model_type",
    "base_model.hidden_size",
    "base_model.vocab_size",
    "base_model.name_or_path",
    "base_model.embedding_probe",
    "base_model.base_tensors",
    "base_model.base_tensors.*",
    "base_model.base_tensors.*.shape",
    "base_model.base_tensors.*.dtype",
    "base_model.base_tensors.*.sha256",
    "base_model.base_tensors.*.probe",
    "base_model.base_tensors.*.probe.0",
]
EDITS = st.lists(st.tuples(st.sampled_from(PLACES), st.none() | JSON.map(lambda v: ("set", v))), min_size=1, max_size=3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    model = unipelt.apply(build(), "lora")
    randomize(model)
    return unipelt.save(model, tmp_path_factory.mktemp("ckpt"))


def _key(node, key: str):
    """A dict key ("*": its first) or a list index in range; None where ``node`` has no such place."""
    if isinstance(node, dict):
        return next(iter(node), None) if key == "*" else key
    return int(key) if isinstance(node, list) and key.isdigit() and int(key) < len(node) else None


def _edit(meta, place: str, action) -> None:
    """Delete (action None) or set the value at ``place``, where the file has that place."""
    *parents, last = place.split(".")
    node = meta
    for key in parents:
        key = _key(node, key)
        node = None if key is None else node.get(key) if isinstance(node, dict) else node[key]
    key = _key(node, last)
    if key is None or (isinstance(node, dict) and key not in node and action is None):
        return
    if action is None:
        node.pop(key)
    else:
        node[key] = action[1]


def _state(model) -> tuple:
    return (
        [n for n, _ in model.named_modules()],
        getattr(model, "pelt_config", None),
        {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()},
    )


def _same(a: tuple, b: tuple) -> bool:
    return (
        a[0] == b[0]
        and a[1] == b[1]
        and a[2].keys() == b[2].keys()
        and all(torch.equal(a[2][n][0], b[2][n][0]) and a[2][n][1] == b[2][n][1] for n in a[2])
    )


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=EDITS, raw=st.none() | st.binary(max_size=30), applied=st.booleans())
def test_random_checkpoint_metadata(checkpoint, edits, raw, applied):
    meta = json.loads((checkpoint / "unipelt.json").read_text())
    for place, action in edits:
        _edit(meta, place, action)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "unipelt.safetensors").write_bytes((checkpoint / "unipelt.safetensors").read_bytes())
        (folder / "unipelt.json").write_bytes(raw if raw is not None else json.dumps(meta).encode())
        files = {p.name: p.read_bytes() for p in folder.iterdir()}
        model = unipelt.apply(build(), "lora") if applied else build()
        before = _state(model)
        try:
            unipelt.load(model, folder)
            event("loaded")
        except UniPeltError:
            event("refused")
            assert _same(before, _state(model)), "a refused load changed the model"
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == files
