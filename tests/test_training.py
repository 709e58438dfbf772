import copy

import pytest
import torch
from conftest import batch, build, build_lm, randomize
from datasets import Dataset
from transformers import GPTNeoXConfig, GPTNeoXForSequenceClassification, Trainer, TrainingArguments

import unipelt
from unipelt import PeltConfig, UniPeltError
from unipelt.inject import head_parameter_names

PRESETS = sorted(unipelt.PRESETS)
PA_ATTN = unipelt.AdapterConfig(target="attn", insertion="parallel", r=4, composition="gated")  # reads a tap


def _step(model, lr=1e-2):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    out = model(**batch(), labels=torch.tensor([0, 1, 2]))
    out.loss.backward()
    opt.step()
    return out.loss


@pytest.mark.parametrize("preset", PRESETS)
def test_a_training_step_changes_only_pelt_parameters_and_the_head(arch, preset):
    model = unipelt.apply(build(arch), preset)
    head = head_parameter_names(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert torch.isfinite(_step(model))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed <= trainable
    if preset == "full":
        assert trainable == set(before)
    elif preset == "bitfit":
        assert trainable == head | {n for n in before if n.endswith(".bias")}
    elif preset == "head-only":  # the frozen backbone: the head alone trains, and it moves
        assert trainable == head and changed and changed <= head
    else:  # one name prefix selects exactly what trains
        assert trainable == head | {n for n in before if "pelt_" in n}
        assert any("pelt_" in n for n in changed)


@pytest.mark.parametrize("kind", ["fused", "foreach", "for-loop"])
@pytest.mark.parametrize("preset", PRESETS)
def test_eval_after_an_optimizer_step_reads_the_new_weights(preset, kind):
    """An eval keeps the fused weights it built until a parameter changes; a fused optimizer
    (Trainer's default) writes parameters without bumping their version counters."""
    model, b = unipelt.apply(build(), preset), batch()
    randomize(model, std=0.2)  # LoRA's and the scaled adapter's B away from zero
    with torch.no_grad():
        model(**b)  # builds and keeps every cached weight
    options = {"fused": dict(fused=True), "foreach": dict(foreach=True), "for-loop": dict(foreach=False)}[kind]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05, **options)
    model.train()
    model(**b, labels=torch.tensor([0, 1, 2])).loss.backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**b).logits, copy.deepcopy(model)(**b).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("preset", ["unipelt-apl", "adapter", "prefix"])
def test_eval_after_new_data_is_assigned_reads_the_new_weights(preset):
    """``p.data = p.data + d`` keeps p's version counter, and two such updates put p back at its
    old address as often as not (glibc hands the block just freed to the next tensor of its size):
    the eval read fused weights made from the old values (7 of 30 tries on Llama's unipelt-apl)."""
    b = batch()
    for seed in range(10):
        model = unipelt.apply(build("llama"), preset)
        randomize(model, std=0.2, seed=seed)
        model.eval()
        with torch.no_grad():
            model(**b)  # builds and keeps every cached weight
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data + 0.05
                p.data = p.data + 0.05
        with torch.no_grad():
            torch.testing.assert_close(model(**b).logits, copy.deepcopy(model)(**b).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("preset", ["unipelt-apl", "adapter", "lora", "prefix"])
def test_eval_after_a_conversion_reads_the_converted_weights(preset):
    """``.to()``/``.half()``/``.float()`` give parameters new ``.data`` and keep their version
    counters; storage at a freed address (CUDA's caching allocator) matched the old key. Here the
    conversion writes the values in place behind the counter, as that reuse would look."""
    model, b = unipelt.apply(build(), preset), batch()
    randomize(model, std=0.2)
    model.eval()
    with torch.no_grad():
        model(**b)  # builds and keeps every cached weight

    def rescale(t):
        if t.requires_grad:
            t.data.mul_(1.5)
        return t

    model._apply(rescale)
    with torch.no_grad():
        torch.testing.assert_close(model(**b).logits, copy.deepcopy(model)(**b).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("preset", PRESETS)
def test_training_after_an_inference_mode_eval_with_some_modules_frozen(preset):
    """Weights cached under torch.inference_mode() are inference tensors, which autograd cannot
    save: a later step that trains the other modules (their inputs need gradients) must not reuse
    them. The eval also keeps the token mask's mean weights, which a step with the same mask reads."""
    model, b = unipelt.apply(build(), preset), batch()
    randomize(model, std=0.2)
    with torch.inference_mode():
        model(**b)
    for name, p in model.named_parameters():
        if "adapter" in name or "lora" in name:  # stage 2: the rest trains on
            p.requires_grad_(False)
    model.train()
    model(**b, labels=torch.tensor([0, 1, 2])).loss.backward()  # raised "Inference tensors cannot be saved"


def _replicate(model: torch.nn.Module, grad: bool = False) -> tuple[torch.nn.Module, list]:
    """What torch.nn.parallel.replicate does to the modules, on the CPU: a shallow copy of each,
    children re-pointed, each parameter replaced by the device's copy, set as a plain attribute
    (a replica lists no parameters). Here the copies are 2x, with ``grad`` leaves of their own
    where the original trains. Returns the replica and the copies, in ``parameters()`` order."""
    memo = {id(m): m._replicate_for_data_parallel() for m in model.modules()}
    copies = {id(p): (2 * p.detach()).requires_grad_(grad and p.requires_grad) for p in model.parameters()}
    for m in model.modules():
        replica = memo[id(m)]
        for key, child in m._modules.items():
            replica._modules[key] = None if child is None else memo[id(child)]
        for key, p in m._parameters.items():
            setattr(replica, key, None if p is None else copies[id(p)])
    return memo[id(model)], list(copies.values())


def _doubled(model):
    doubled = copy.deepcopy(model)
    with torch.no_grad():
        for p in doubled.parameters():
            p.mul_(2)
    return doubled


REFERRING = ["lora", "unipelt-apl", "prefix", "mh-parallel-adapter", "adapter", "prompt", "mam"]


@pytest.mark.parametrize("preset", REFERRING)
def test_data_parallel_replicas_run_their_own_weights(preset):
    """A DataParallel replica (HF Trainer's choice for several GPUs in one process) of a module
    that refers to another (LoRA's shared read, a layer's prefix encoder, a head adapter's query)
    ran the original's weights, on another GPU: a device error, or the wrong answer."""
    model, b = unipelt.apply(build(), preset), batch()
    randomize(model, std=0.2)
    model.eval()
    want = _doubled(model)(**b).logits
    with torch.no_grad():
        torch.testing.assert_close(_replicate(model)[0](**b).logits, want)
    assert torch.equal(model(**b).logits, model(**b).logits)  # the model itself runs on


@pytest.mark.parametrize("preset", REFERRING)
def test_data_parallel_replicas_train_their_own_weights(preset):
    """Under autograd too: the loss and every gradient are the replica's, none reaches the original."""
    model, b = unipelt.apply(build(), preset), batch()
    randomize(model, std=0.2)
    model.train()
    labels = torch.tensor([0, 1, 2])
    doubled = _doubled(model)
    torch.manual_seed(0)
    doubled(**b, labels=labels).loss.backward()
    replica, copies = _replicate(model, grad=True)
    torch.manual_seed(0)  # the same dropout masks
    replica(**b, labels=labels).loss.backward()
    for (name, p), q in zip(doubled.named_parameters(), copies, strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, msg=name)
    assert any(q.grad is not None for q in copies)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("preset", ["prefix", "unipelt-apl"])
def test_the_data_parallel_replica_on_the_first_gpu_trains_right_after_apply(preset):
    """On the first GPU a replica's parameters are the original's tensors (broadcast hands them
    back), in a new thread: its encoder, which shares the original's cache, read the views
    apply()'s participation probe made, whose graph was freed ("backward through the graph a
    second time")."""
    import threading

    model, b = unipelt.apply(build(), preset), batch()
    labels, found = torch.tensor([0, 1, 2]), {}
    memo = {id(m): m._replicate_for_data_parallel() for m in model.modules()}
    for m in model.modules():
        for key, child in m._modules.items():
            memo[id(m)]._modules[key] = None if child is None else memo[id(child)]
        for key, p in m._parameters.items():
            setattr(memo[id(m)], key, None if p is None else p.view_as(p))  # the original's, as a non-leaf

    def step():
        try:
            torch.manual_seed(0)
            memo[id(model)](**b, labels=labels).loss.backward()
            found["grads"] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        except RuntimeError as e:
            found["error"] = e

    thread = threading.Thread(target=step)
    thread.start()
    thread.join()
    assert "error" not in found, found.get("error")
    model.zero_grad()
    torch.manual_seed(0)
    model(**b, labels=labels).loss.backward()
    assert found["grads"].keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, grad in found["grads"].items():
        torch.testing.assert_close(grad, dict(model.named_parameters())[name].grad, msg=name)


def test_data_parallel_is_refused_where_a_replica_cannot_reach_what_it_reads():
    """A decoder-only prompt runs its own pass through the original model (a hook); a replica of a
    part of the model has no copy of the prefix encoder above it: both refused, in one line."""
    model = unipelt.apply(build_lm("gpt2"), "prompt")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad(), pytest.raises(UniPeltError, match="DataParallel"):
        _replicate(model)[0](input_ids=ids)
    model = unipelt.apply(build(), "prefix")
    with torch.no_grad(), pytest.raises(UniPeltError, match="DataParallel"):
        _replicate(model.bert)[0](**batch())


def test_trainer_trains_every_preset_with_a_finite_loss(tmp_path):
    g = torch.Generator().manual_seed(0)
    rows = [
        {"input_ids": torch.randint(5, 120, (int(n),), generator=g).tolist(), "labels": int(n) % 3}
        for n in torch.randint(4, 12, (32,), generator=g)
    ]
    data = Dataset.from_list(rows)

    def collate(items):
        t = max(len(i["input_ids"]) for i in items)
        ids = torch.tensor([i["input_ids"] + [0] * (t - len(i["input_ids"])) for i in items])
        return {
            "input_ids": ids,
            "attention_mask": (ids != 0).long(),
            "labels": torch.tensor([i["labels"] for i in items]),
        }

    for preset in PRESETS:
        model = unipelt.apply(build(), preset)
        args = TrainingArguments(
            output_dir=str(tmp_path / preset),
            max_steps=3,
            per_device_train_batch_size=8,
            learning_rate=unipelt.DEFAULT_LEARNING_RATES[preset],
            report_to=[],
            save_strategy="no",
            logging_steps=1,
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collate)
        result = trainer.train()
        assert torch.isfinite(torch.tensor(result.training_loss)), preset


@pytest.mark.parametrize("preset", ["unipelt-apl", "mam", "mh-parallel-adapter", "prompt"])
def test_bf16_models_get_bf16_modules_and_run(arch, preset):
    model = unipelt.apply(build(arch).to(torch.bfloat16), preset)
    dtypes = {p.dtype for n, p in model.named_parameters() if "pelt_" in n}
    assert dtypes == {torch.bfloat16}
    assert torch.isfinite(_step(model, lr=1e-3))
    with torch.no_grad():
        assert model(**batch()).logits.dtype == torch.bfloat16


def test_unsupported_architecture_names_the_supported_ones():
    config = GPTNeoXConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=50
    )
    model = GPTNeoXForSequenceClassification(config)
    with pytest.raises(
        UniPeltError, match="model_type 'gpt_neox'.*supported: bart, bert, .*gpt2.*llama.*roberta, t5.*contributing.md"
    ):
        unipelt.apply(model, "lora")


def test_apply_twice_and_bad_arguments_fail_clearly():
    model = unipelt.apply(build(), "lora")
    with pytest.raises(UniPeltError, match="already has unipelt modules"):
        unipelt.apply(model, "adapter")
    with pytest.raises(UniPeltError, match="unknown preset 'lora2'"):
        unipelt.apply(build(), "lora2")
    with pytest.raises(UniPeltError, match="not int"):
        unipelt.apply(build(), 3)


def test_apply_accepts_a_single_method_and_free_combinations():
    cfg = unipelt.PeltConfig(
        methods=(
            unipelt.PrefixConfig(length=4),
            unipelt.LoRAConfig(targets=("ffn_in", "ffn_out"), r=4),
            unipelt.AdapterConfig(target="attn", insertion="parallel", composition="gated"),
        )
    )
    model = unipelt.apply(build(), cfg)
    counts = unipelt.count_parameters(model)
    assert counts["lora"] == 2 * (4 * (32 + 64) + 4 * (64 + 32))
    assert counts["gate"] == 2 * 33
    assert unipelt.count_parameters(unipelt.apply(build(), unipelt.LoRAConfig()))["lora"] == 2 * 2 * 2 * 32 * 8


def test_gradient_checkpointing_gives_the_same_gradients(arch):
    """The recompute reruns layers outside their PeltLayer wrapper: masks and taps must hold."""
    grads = []
    for checkpointing in (False, True):
        model = unipelt.apply(build(arch), PeltConfig(methods=(*unipelt.PRESETS["unipelt-apl"].methods, PA_ATTN)))
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        torch.manual_seed(0)  # same dropout masks in both runs
        model(**batch(), labels=torch.tensor([0, 1, 2])).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if "pelt_" in n and p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_gradient_checkpointing_with_two_forwards_before_one_backward(arch):
    """Two forwards with different padding, then one backward (gradient accumulation done as a sum
    of losses): each recomputed layer must pool its gates over its own forward's mask."""
    first, second = batch(seed=1), batch(seed=3)
    second["attention_mask"][0, -4:] = 0  # another padding than the first batch's
    second["input_ids"][0, -4:] = 1
    second["input_ids"][0, -5] = 2
    grads = []
    for checkpointing in (False, True):
        model = unipelt.apply(build(arch), "unipelt-apl")
        randomize(model, only_pelt=True)
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        torch.manual_seed(0)
        one = model(**first, labels=torch.tensor([0, 1, 2])).loss
        (one + model(**second, labels=torch.tensor([2, 1, 0])).loss).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if "pelt_" in n and p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-9, msg=name)


def test_attention_fields_pick_the_sublayers_of_an_encoder_decoder():
    cfg = unipelt.PeltConfig(
        methods=(
            unipelt.PrefixConfig(length=4, attention=("cross",)),
            unipelt.LoRAConfig(r=2, targets=("q",), attention=("self",)),
            unipelt.AdapterConfig(target="attn", insertion="parallel", r=3, attention=("cross",)),
        )
    )
    model = unipelt.apply(build("bart"), cfg)
    names = [n for n, _ in model.named_parameters() if "pelt_" in n]
    assert model.pelt_prefix.slots == 2  # the decoder's two cross-attentions
    assert any("encoder.layers.0.self_attn.q_proj.pelt_lora" in n for n in names)
    assert not any("encoder_attn" in n and "pelt_lora" in n for n in names)
    assert unipelt.count_parameters(model)["adapter"] == 2 * (2 * 3 * 32 + 3 + 32)  # decoder layers only
    with pytest.raises(UniPeltError, match="matches no attention sublayer"):
        unipelt.apply(build("bert"), unipelt.PrefixConfig(attention=("cross",)))


@pytest.mark.parametrize(
    "arch, kw, per_layer",
    [
        ("llama", {}, 2 * 4 * (32 + 64) + 4 * (64 + 32)),  # gate_proj and up_proj in, down_proj out
        ("t5", {"feed_forward_proj": "gated-gelu"}, 2 * 4 * (32 + 64) + 4 * (64 + 32)),  # wi_0, wi_1 in, wo out
        ("t5", {}, 4 * (32 + 64) + 4 * (64 + 32)),  # wi in, wo out
    ],
)
def test_lora_ffn_targets_every_input_projection_of_a_gated_ffn(arch, kw, per_layer):
    model = unipelt.apply(build(arch, **kw), unipelt.LoRAConfig(r=4, targets=("ffn_in", "ffn_out")))
    stacks = 2 if arch == "t5" else 1
    assert unipelt.count_parameters(model)["lora"] == stacks * 2 * per_layer


@pytest.mark.parametrize("arch", ["llama", "bart", "t5"])
def test_a_language_model_head_stays_frozen_even_untied(arch):
    """The LM head is pretrained, not a task head: only classifiers are trained with the methods."""
    model = unipelt.apply(build_lm(arch, tie_word_embeddings=False), "lora")
    assert head_parameter_names(model) == set()
    assert not model.get_output_embeddings().weight.requires_grad


def test_data_parallel_replicas_in_one_thread_never_read_each_others_prefix():
    """A replica lists no parameters (its copies are plain attributes): the prefix views a
    no-grad replica made were keyed on no tensor, and the next replica in that thread read them."""
    model, b = unipelt.apply(build(), "prefix"), batch()
    randomize(model, std=0.2)
    model.eval()
    with torch.no_grad():
        first = _replicate(model)[0](**b).logits
        model.pelt_prefix.nets[0].mlp_out.bias.add_(1.0)
        second = _replicate(model)[0](**b).logits
        torch.testing.assert_close(second, _doubled(model)(**b).logits)
    assert not torch.allclose(first, second)
