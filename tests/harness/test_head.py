"""The harness's task head: chosen from the backbone, kept in the run's key, trained at its own rate."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from unipelt.harness import runner
from unipelt.harness.spec import HEAD_LR, RunSpec, make_spec
from unipelt.harness.tasks import get_task


@pytest.fixture
def mean_model(tiny_model, tmp_path) -> str:
    """The tiny model as a sentence-transformers directory that declares mean pooling."""
    path = tmp_path / "mean-model"
    shutil.copytree(tiny_model, path)
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return str(path)


def test_the_head_is_the_backbones_own_and_in_the_key(tiny_model, mean_model):
    plain = make_spec(task="sst2", preset="lora", model=tiny_model)
    declared = make_spec(task="sst2", preset="lora", model=mean_model)
    assert (plain.head, plain.config.head) == ("model", "model")
    assert (declared.head, declared.config.head) == ("mean", "mean")
    forced = make_spec(task="sst2", preset="lora", model=mean_model, head="pooler")
    assert forced.config.head == "pooler" and len({plain.key, declared.key, forced.key}) == 3
    assert plain.head_lr == HEAD_LR and make_spec(task="sst2", preset="lora", model=tiny_model, head_lr=0.01).key != (
        plain.key
    )


def test_runs_stored_before_heads_keep_their_keys(tiny_model):
    """A stored spec without head or head_lr reads back as it ran (the model's head, the method's rate)."""
    spec = make_spec(task="sst2", preset="lora", model=tiny_model)
    old = {k: v for k, v in spec.to_dict().items() if k not in ("head", "head_lr")}
    old["config"] = {k: v for k, v in old["config"].items() if k != "head"}
    back = RunSpec.from_dict(old)
    assert back.head_lr is None and back.config.head == "auto"


def test_the_head_trains_in_its_own_group_at_head_lr(tiny_model, tmp_path):
    spec = make_spec(task="sst2", preset="lora", model=tiny_model, head_lr=0.01, lr=0.002)
    tokenizer, model = runner.load_model(spec, get_task("sst2"))
    trainer = runner.ProtocolTrainer(
        model=model,
        args=runner._arguments(spec, str(tmp_path)),
        eval_dataset=[{}],
        objective=runner.objective_of(spec, get_task("sst2"), tokenizer),
        head_lr=spec.head_lr,
    )
    groups = trainer.create_optimizer().param_groups
    head = {id(p) for n, p in model.named_parameters() if n.startswith("classifier.")}
    by_lr = {g["lr"]: {id(p) for p in g["params"]} for g in groups}
    assert by_lr[0.01] == head and by_lr[0.002] and not by_lr[0.002] & head
    # the decay every stored run trained with, said in the groups, not left to AdamW's default
    assert [g["weight_decay"] for g in groups] == [runner.PROTOCOL_DECAY] * 2 == [0.01, 0.01]


def test_compile_is_in_the_run_key_and_eager_keys_stay_as_they_were(tiny_model):
    """Inductor draws its own dropout masks: a compiled run is another run, never a resumed one."""
    eager = make_spec(task="sst2", preset="lora", model=tiny_model)
    compiled = make_spec(task="sst2", preset="lora", model=tiny_model, compile=True)
    assert compiled.key != eager.key


def test_a_regression_head_starts_at_the_label_mean(tiny_model):
    spec = make_spec(task="stsb", preset="lora", model=tiny_model)
    _, model = runner.load_model(spec, get_task("stsb"))
    runner.start_at_label_mean(model, pd.Series([1.0, 2.0, 4.5]))
    assert torch.allclose(model.classifier.bias, torch.tensor([2.5]))


def test_a_pair_task_row_without_its_second_sentence_keeps_the_others_pairs(tiny_model):
    """One missing second sentence (the hub has such rows) read the whole frame as single sentences."""
    import pandas as pd
    from transformers import AutoTokenizer

    from unipelt.harness.objective import Classify
    from unipelt.harness.tasks import get_task

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    frame = pd.DataFrame({"a": ["a cat sat", "it rains"], "b": ["a cat is sitting", None], "label": [0, 1]})
    features = Classify(get_task("rte"), tokenizer, 64).encode(frame, train=True)
    assert features[0]["input_ids"] == tokenizer("a cat sat", "a cat is sitting")["input_ids"]
    assert features[1]["input_ids"] == tokenizer(["it rains"], [""])["input_ids"][0]  # a pair, its second empty
    assert sum(features[0]["token_type_ids"]) > 0  # the second segment


def test_a_head_the_model_directory_holds_at_the_tasks_size_is_drawn_afresh(tiny_model, tmp_path):
    """A model fine-tuned on another task with as many labels (SST-2's for RTE) kept its trained
    classifier: transformers redraws a head only of another size. Every run starts from a fresh
    head drawn from its model seed, where the directory holds none as much as where it holds one."""
    from transformers import AutoModelForSequenceClassification

    trained = tmp_path / "trained-head"
    shutil.copytree(tiny_model, trained)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    with torch.no_grad():
        model.classifier.weight.fill_(7.0)
    model.save_pretrained(trained)
    task = get_task("rte")
    specs = [make_spec(task="rte", preset="lora", model=str(m)) for m in (tiny_model, trained)]
    heads = [runner.load_model(spec, task)[1] for spec in specs]
    assert torch.equal(heads[0].classifier.weight, heads[1].classifier.weight)  # the seed's draw, both
    assert heads[1].classifier.weight.abs().max() < 1


@pytest.mark.parametrize("arch", ["t5", "modernbert", "bart"])
def test_a_heads_fresh_draw_has_its_architectures_own_scale(arch, tmp_path):
    """T5 and ModernBERT set their head's scale in a branch for the head's (or the model's)
    class: drawn layer by layer, T5's head came at std 1.0 where transformers draws 0.17, and
    ModernBERT's classifier at 0.02 for 0.15."""
    import sys

    from transformers import AutoModel, AutoModelForSequenceClassification, set_seed

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from conftest import CONFIGS

    config = CONFIGS[arch](num_labels=2)
    AutoModel.from_config(config).save_pretrained(tmp_path / "no-head")
    trained = AutoModelForSequenceClassification.from_config(config)
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if not name.startswith(trained.base_model_prefix + "."):
                p.fill_(7.0)
    trained.save_pretrained(tmp_path / "head")
    heads = []
    for directory in ("no-head", "head"):
        set_seed(42)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            tmp_path / directory, num_labels=2, ignore_mismatched_sizes=True, output_loading_info=True
        )
        runner._fresh_head(model, info)
        heads.append({n: p for n, p in model.named_parameters() if not n.startswith(model.base_model_prefix + ".")})
    assert heads[0].keys() == heads[1].keys()
    for name, fresh in heads[1].items():  # the same distribution (the draws' order may differ)
        if fresh.dim() > 1:
            assert 0.5 < fresh.std() / heads[0][name].std() < 2, name


def test_a_copy_of_a_bf16_runs_model_computes_its_own_head_in_float32(tiny_model):
    """The float32 head was a forward patched onto the instance: a deepcopy or a DataParallel
    replica (a shallow copy) kept calling the original's head, and torch.save failed on it."""
    import copy
    import io

    spec = make_spec(task="stsb", preset="lora", model=tiny_model, bf16=True)
    _, model = runner.load_model(spec, get_task("stsb"))
    model.eval()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.classifier.weight.add_(1.0)
    ids = torch.tensor([[101, 2054, 2003, 102]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mine, theirs = model(input_ids=ids).logits, twin(input_ids=ids).logits
    assert mine.dtype == theirs.dtype == torch.float32 and not torch.equal(mine, theirs)
    torch.save(model, io.BytesIO())
