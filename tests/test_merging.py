"""Merging saved checkpoints (unipelt.merge_checkpoints) against peft's ``add_weighted_adapter``
on the same LoRA weights, linear merging of other methods, and what is refused."""

import json

import pytest
import torch
from conftest import batch, build, randomize, write_tensors

import unipelt
from unipelt import LoRAConfig, PeltConfig, UniPeltError
from unipelt.checkpoint import WEIGHTS
from unipelt.cli import main

peft = pytest.importorskip("peft")
from safetensors.torch import load_file  # noqa: E402

LORA = LoRAConfig(r=4, alpha=8.0, targets=("q", "v"))
WEIGHTS_OF_TASKS = [0.7, 0.3]  # summing to one: the shared head stays as it is


def logits(model):
    with torch.no_grad():
        return model(**batch()).logits


def _peft_and_ours(root, cfg, ours_cfg):
    """Two peft LoRA adapters (``cfg``) on one tiny BERT, and the same two as unipelt checkpoints."""
    ref = peft.get_peft_model(build(), cfg, adapter_name="t0")
    ref.add_adapter("t1", cfg)
    g = torch.Generator().manual_seed(5)
    dirs = []
    for task in ("t0", "t1"):
        ours = unipelt.apply(build(), ours_cfg)
        with torch.no_grad():
            for name, m in ref.named_modules():
                if hasattr(m, "lora_A") and task in m.lora_A:
                    a = torch.randn(m.lora_A[task].weight.shape, generator=g) * 0.3
                    b = torch.randn(m.lora_B[task].weight.shape, generator=g) * 0.3
                    m.lora_A[task].weight.copy_(a)
                    m.lora_B[task].weight.copy_(b)
                    lora = ours.get_submodule(name.replace("base_model.model.", "")).pelt_lora
                    lora.down[0].copy_(a.T)
                    lora.up[0].copy_(b.T)
        dirs.append(unipelt.save(ours, root / task))
    return ref.eval(), dirs, root


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"])
    return _peft_and_ours(tmp_path_factory.mktemp("merge"), cfg, LORA)


METHODS = ["linear", "ties", "dare_linear", "dare_ties", "svd", "ties_svd", "dare_linear_svd", "dare_ties_svd"]


def _seed_before_the_first_merge(monkeypatch, model, seed: int) -> None:
    """peft initialises the new adapter (random draws) before it merges: seed after that, so that
    DARE's masks come from the same random stream as unipelt's ``seed``."""
    cls, seeded = type(model), []
    for name in ("_generalized_task_arithmetic_weighted_adapter", "_svd_generalized_task_arithmetic_weighted_adapter"):

        def wrapped(self, *args, _original=getattr(cls, name), **kwargs):
            if not seeded:
                torch.manual_seed(seed)
                seeded.append(True)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, wrapped)


def _assert_merge_matches_peft(tasks, method, monkeypatch):
    ref, dirs, root = tasks
    _seed_before_the_first_merge(monkeypatch, ref.base_model, 11)
    ref.add_weighted_adapter(["t0", "t1"], WEIGHTS_OF_TASKS, method, combination_type=method, density=0.5)
    ref.set_adapter(method)
    want = logits(ref)
    out = unipelt.merge_checkpoints(dirs, WEIGHTS_OF_TASKS, root / method, method=method, density=0.5, seed=11)
    got = logits(unipelt.load(build(), out))
    assert (got - logits(unipelt.load(build(), dirs[0]))).abs().max() > 1e-3  # merging changed something
    assert (got - want).abs().max() < 1e-5, (got - want).abs().max()


@pytest.mark.parametrize("method", METHODS)
def test_merged_checkpoint_gives_peft_add_weighted_adapter_logits(tasks, method, monkeypatch):
    _assert_merge_matches_peft(tasks, method, monkeypatch)


@pytest.mark.parametrize("targets", [("query", "key", "value"), ("value", "attention.output.dense")])
@pytest.mark.parametrize("method", [m for m in METHODS if m.startswith("dare")])
def test_dare_masks_are_drawn_in_the_models_module_order(tmp_path, targets, method, monkeypatch):
    """peft draws a mask per module as the model lists them: query before key, a layer's value
    before its attention.output.dense, neither of which is their order by name."""
    ours = {"query": "q", "key": "k", "value": "v", "attention.output.dense": "o"}
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(targets))
    lora = LoRAConfig(r=4, alpha=8.0, targets=tuple(ours[t] for t in targets))
    _assert_merge_matches_peft(_peft_and_ours(tmp_path, cfg, lora), method, monkeypatch)


@pytest.mark.parametrize("method", METHODS)
def test_two_lora_entries_of_different_scales_merge_as_peft_with_an_alpha_pattern(tmp_path, method, monkeypatch):
    """One checkpoint holds both entries: each module keeps its own scale, as peft's get_delta_weight."""
    cfg = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["query", "value", "attention.output.dense"],
        alpha_pattern={"attention.output.dense": 2},
    )
    ours = PeltConfig(
        methods=(LoRAConfig(r=4, alpha=8.0, targets=("q", "v")), LoRAConfig(r=4, alpha=2.0, targets=("o",)))
    )
    _assert_merge_matches_peft(_peft_and_ours(tmp_path, cfg, ours), method, monkeypatch)


def test_linear_merging_weights_every_tensor_of_other_methods(tmp_path):
    dirs = []
    for i in range(2):
        model = unipelt.apply(build(), "adapter")
        randomize(model, std=0.1, seed=i)
        dirs.append(unipelt.save(model, tmp_path / f"t{i}"))
    out = unipelt.merge_checkpoints(dirs, [0.25, 0.75], tmp_path / "merged")
    parts = [load_file(d / WEIGHTS) for d in dirs]
    merged = load_file(out / WEIGHTS)
    assert merged.keys() == parts[0].keys()
    for n, t in merged.items():
        assert torch.allclose(t, 0.25 * parts[0][n] + 0.75 * parts[1][n], atol=1e-7), n
    unipelt.load(build(), out)  # a normal checkpoint


def test_the_cli_verb_writes_the_same_checkpoint(tasks, capsys):
    _, dirs, root = tasks
    args = ["merge", *map(str, dirs), "--weights", "0.7,0.3", "--method", "ties", "--density", "0.5"]
    assert main([*args, "--out", str(root / "cli")]) == 0
    unipelt.merge_checkpoints(dirs, WEIGHTS_OF_TASKS, root / "api", method="ties", density=0.5)
    assert torch.equal(logits(unipelt.load(build(), root / "cli")), logits(unipelt.load(build(), root / "api")))
    assert main(["merge", str(dirs[0]), "--weights", "1,2", "--out", str(root / "x")]) == 2
    assert "one weight per checkpoint" in capsys.readouterr().err


def _saved(tmp_path, name, preset, **kw):
    return unipelt.save(unipelt.apply(build(**kw), preset), tmp_path / name)


@pytest.mark.parametrize(
    "case, message",
    [
        (lambda p: [_saved(p, "a", "lora"), _saved(p, "b", "adapter")], "another config"),
        (lambda p: [_saved(p, "a", "lora"), _saved(p, "b", "lora", num_hidden_layers=1)], "another base model"),
        (lambda p: [_saved(p, "a", "lora"), _saved(p, "b", "lora", num_labels=2)], "its num_labels is 2, not 3"),
        (lambda p: [_saved(p, "a", "unipelt-apl"), _saved(p, "b", "unipelt-apl")], "gated"),
        (lambda p: [_saved(p, "a", "dora"), _saved(p, "b", "dora")], "DoRA does not merge"),
    ],
    ids=["presets", "bases", "heads", "gated", "dora"],
)
def test_what_is_not_meaningful_is_refused(tmp_path, case, message):
    with pytest.raises(UniPeltError, match=message):
        unipelt.merge_checkpoints(case(tmp_path), [0.5, 0.5], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_one_base_loaded_from_two_paths_merges_and_other_weights_do_not(tmp_path):
    """The base is judged as load judges it, by its weights: not by where it was loaded from."""
    dirs = []
    for name, path in (("a", "/models/minilm"), ("b", "./minilm")):
        model = build()
        model.config._name_or_path = path
        dirs.append(unipelt.save(unipelt.apply(model, "lora"), tmp_path / name))
    unipelt.load(build(), unipelt.merge_checkpoints(dirs, [0.5, 0.5], tmp_path / "out"))
    other = _saved(tmp_path, "c", "lora", seed=1)  # the same shapes and config, other weights
    with pytest.raises(UniPeltError, match="another base model"):
        unipelt.merge_checkpoints([dirs[0], other], [0.5, 0.5], tmp_path / "refused")


def test_svd_merge_with_r_above_a_layers_rank_keeps_the_configs_shapes(tmp_path):
    """Llama's v_proj maps 32 to 16 (two key/value heads): ΔW has rank 16 at most, below r = 24.
    The merge loads, and its s·B A is the weighted sum of the ΔWs exactly."""
    cfg = unipelt.PeltConfig(methods=(LoRAConfig(r=24, alpha=24.0, targets=("q", "v")),))
    dirs = []
    for seed in (2, 3):
        model = unipelt.apply(build("llama"), cfg)
        randomize(model, std=0.3, seed=seed)
        dirs.append(unipelt.save(model, tmp_path / str(seed)))
    out = unipelt.merge_checkpoints(dirs, [0.7, 0.3], tmp_path / "out", method="svd")
    merged, first, second = (unipelt.load(build("llama"), d) for d in (out, *dirs))

    def delta(model):  # B A as (d_out, d_in); s = alpha / r = 1
        lora = model.get_submodule("model.layers.0.self_attn.v_proj").pelt_lora
        return lora.up[0].T @ lora.down[0].T

    torch.testing.assert_close(delta(merged), 0.7 * delta(first) + 0.3 * delta(second))


def test_ties_and_dare_need_lora_only(tmp_path):
    dirs = [_saved(tmp_path, "a", "adapter"), _saved(tmp_path, "b", "adapter")]
    with pytest.raises(UniPeltError, match="LoRA's low-rank matrices only"):
        unipelt.merge_checkpoints(dirs, [0.5, 0.5], tmp_path / "out", method="ties", density=0.5)
    with pytest.raises(UniPeltError, match="unknown merge method"):
        unipelt.merge_checkpoints(dirs, [0.5, 0.5], tmp_path / "out", method="cat")
    for options, message in (
        (dict(method="ties", majority_sign="bogus"), "majority_sign must be 'total' or 'frequency'"),  # was frequency
        (dict(method="dare_linear", density="x"), "density must be a number in"),  # a TypeError
        (dict(method="dare_linear", density=None), "density must be a number in"),
    ):
        with pytest.raises(UniPeltError, match=message):
            unipelt.merge_checkpoints(dirs, [0.5, 0.5], tmp_path / "out", **options)


def test_numpy_weights_merge_and_bad_weights_leave_an_existing_checkpoint_intact(tmp_path):
    """Writing over a checkpoint: any failure leaves the old pair loadable, byte for byte."""
    import numpy as np

    dirs = [_saved(tmp_path, "a", "adapter"), _saved(tmp_path, "b", "adapter")]
    out = unipelt.merge_checkpoints(dirs, [0.5, 0.5], tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for weights, message in (([0.5, float("nan")], "finite"), (["a", 1], "must be numbers"), (0.5, "must be numbers")):
        with pytest.raises(UniPeltError, match=message):
            unipelt.merge_checkpoints(dirs, weights, out)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    unipelt.merge_checkpoints(dirs, np.array([0.3, 0.7], dtype=np.float32), out)  # was a TypeError, after the weights
    assert json.loads((out / "unipelt.json").read_text())["merged_from"]["weights"] == pytest.approx([0.3, 0.7])
    unipelt.load(build(), out)


def _without(directory, suffix):
    """The checkpoint with its tensors ending ``suffix`` removed, its checksum made to match."""
    write_tensors(directory, {n: t for n, t in load_file(directory / WEIGHTS).items() if not n.endswith(suffix)})
    return directory


@pytest.mark.parametrize("suffix", [".pelt_lora.up", ".pelt_lora.down"])
def test_a_checkpoint_without_one_half_of_its_lora_is_one_error_line(tmp_path, capsys, suffix):
    dirs = [_without(_saved(tmp_path, n, "lora"), suffix) for n in "ab"]
    argv = ["merge", *map(str, dirs), "--weights", "0.5,0.5", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("unipelt: error: ") and err.count("\n") == 1 and "pair at" in err, err
    assert not (tmp_path / "out").exists()


def test_a_merge_is_never_written_into_a_model_directory(tmp_path):
    dirs = [_saved(tmp_path, n, "lora") for n in "ab"]
    model_dir = tmp_path / "model"
    build().save_pretrained(model_dir)
    before = sorted(p.name for p in model_dir.iterdir())
    with pytest.raises(UniPeltError, match="holds a model \\(config.json\\)"):
        unipelt.merge_checkpoints(dirs, [0.5, 0.5], model_dir)
    assert sorted(p.name for p in model_dir.iterdir()) == before


def test_weights_whose_merge_overflows_write_nothing(tmp_path):
    dirs = []
    for i, n in enumerate("ab"):
        model = unipelt.apply(build(), "lora")
        randomize(model, std=0.5, seed=i, only_pelt=True)
        dirs.append(unipelt.save(model, tmp_path / n))
    with pytest.raises(UniPeltError, match="the merge is not finite in torch.float32"):
        unipelt.merge_checkpoints(dirs, [1e308, 1e308], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_failed_write_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    import unipelt.checkpoint as checkpoint

    model = unipelt.apply(build(), "lora")
    out = unipelt.save(model, tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    randomize(model)
    monkeypatch.setattr(checkpoint, "_sha256", lambda path: 1 / 0)  # fails between the two files
    with pytest.raises(ZeroDivisionError):
        unipelt.save(model, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_failed_save_or_merge_into_a_new_directory_leaves_none(tmp_path, monkeypatch):
    import unipelt.checkpoint as checkpoint

    dirs = [_saved(tmp_path, n, "lora") for n in ("a", "b")]
    monkeypatch.setattr(checkpoint, "_sha256", lambda path: 1 / 0)  # fails between the two files
    with pytest.raises(ZeroDivisionError):
        unipelt.merge_checkpoints(dirs, [0.5, 0.5], tmp_path / "merged")
    with pytest.raises(ZeroDivisionError):
        unipelt.save(unipelt.apply(build(), "lora"), tmp_path / "saved")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_an_ia3_vector_merges_as_its_offset_from_one(tmp_path):
    """(IA)³ is neutral at 1, not at 0: weights [0, 0] zeroed every key, value and FFN activation,
    and adding two tasks ([1, 1]) gave l_0 + l_1 where task arithmetic gives 1 + (l_0 - 1) + (l_1 - 1)."""
    dirs = []
    for i in range(2):
        model = unipelt.apply(build(), "ia3")
        randomize(model, std=0.2, seed=i)
        dirs.append(unipelt.save(model, tmp_path / f"t{i}"))
    parts = [load_file(d / WEIGHTS) for d in dirs]
    for weights in ([1.0, 1.0], [0.0, 0.0], [0.25, 0.75]):
        merged = load_file(unipelt.merge_checkpoints(dirs, weights, tmp_path / f"m{weights}") / WEIGHTS)
        for n in (n for n in merged if n.endswith(".pelt_ia3")):
            want = 1 + sum(w * (p[n] - 1) for w, p in zip(weights, parts))
            torch.testing.assert_close(merged[n], want, msg=n)


def test_a_merge_keeps_to_one_task_and_low_rank_methods_to_lora_alone(tmp_path):
    """The merged checkpoint took the first input's task (pairs, max_length, labels), so it
    depended on the inputs' order; ties/dare/svd merged modules_to_save linearly where the docs
    say they refuse it."""
    model = unipelt.apply(build(), "lora")
    randomize(model, std=0.1)
    single = unipelt.save(model, tmp_path / "single", pairs=False, max_length=64)
    pair = unipelt.save(model, tmp_path / "pair", pairs=True, max_length=64)
    with pytest.raises(UniPeltError, match="another task.*pairs is True, not False"):
        unipelt.merge_checkpoints([single, pair], [0.5, 0.5], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    cfg = PeltConfig(methods=(LORA,), modules_to_save=("pooler",))
    dirs = []
    for i in range(2):
        model = unipelt.apply(build(), cfg)
        randomize(model, std=0.1, seed=i)
        dirs.append(unipelt.save(model, tmp_path / f"saved{i}"))
    for method in ("ties", "dare_ties", "svd"):
        with pytest.raises(UniPeltError, match="low-rank matrices only; use 'linear' for lora, modules_to_save"):
            unipelt.merge_checkpoints(dirs, [0.5, 0.5], tmp_path / "out", method=method, density=0.5, seed=0)
