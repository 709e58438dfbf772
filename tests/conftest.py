"""Tiny random models built in code: no downloads, fast on 2 CPU cores."""

import os

import pytest
import torch
import transformers
from torch import nn
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BartForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
    T5Config,
    T5ForConditionalGeneration,
    T5ForSequenceClassification,
)
from transformers.modeling_outputs import SequenceClassifierOutput

import unipelt

try:  # the property tests: random examples by default, a fixed set where HYPOTHESIS_PROFILE=ci
    from hypothesis import settings as _hypothesis

    # CI gates a landing: a rare example found there would make it red by chance, not by a change
    _hypothesis.register_profile("ci", derandomize=True)
    _hypothesis.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
except ImportError:
    pass

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: N processes share the cores, one thread each
    torch.set_num_threads(1)

TINY = dict(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    num_labels=3,
)
# Special tokens shared by the newer configs: bos 0, pad 1, eos 2 (BART and T5 classify at the eos).
SPECIAL = dict(bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=0)
CONFIGS = {
    "bert": lambda **kw: BertConfig(**{**TINY, **kw}),
    "roberta": lambda **kw: RobertaConfig(**{**TINY, "pad_token_id": 1, **kw}),
    # grouped-query attention: 4 query heads share 2 key/value heads
    "llama": lambda **kw: LlamaConfig(**{**TINY, **SPECIAL, "num_key_value_heads": 2, **kw}),
    "bart": lambda **kw: BartConfig(
        **{
            "vocab_size": 120,
            "d_model": 32,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 64,
            "decoder_ffn_dim": 64,
            "max_position_embeddings": 64,
            "num_labels": 3,
            **SPECIAL,
            **kw,
        }
    ),
    # d_kv * heads = 24 differs from d_model = 32, as in several real T5 sizes
    "t5": lambda **kw: T5Config(
        **{
            "vocab_size": 120,
            "d_model": 32,
            "d_kv": 6,
            "d_ff": 64,
            "num_layers": 2,
            "num_heads": 4,
            "num_labels": 3,
            **SPECIAL,
            **kw,
        }
    ),
    "mbart": lambda **kw: transformers.MBartConfig(
        **{
            "vocab_size": 120,
            "d_model": 32,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 64,
            "decoder_ffn_dim": 64,
            "max_position_embeddings": 64,
            "num_labels": 3,
            **SPECIAL,
            **kw,
        }
    ),
    # relative-position (disentangled) attention with both c2p and p2c terms, as DeBERTa-v3
    "deberta-v2": lambda **kw: transformers.DebertaV2Config(
        **{**TINY, "relative_attention": True, "pos_att_type": ["p2c", "c2p"], "position_buckets": 8, **kw}
    ),
    "electra": lambda **kw: transformers.ElectraConfig(**{**TINY, "embedding_size": 32, **kw}),
    "distilbert": lambda **kw: transformers.DistilBertConfig(
        **{
            "vocab_size": 120,
            "dim": 32,
            "n_layers": 2,
            "n_heads": 4,
            "hidden_dim": 64,
            "max_position_embeddings": 64,
            "num_labels": 3,
            **kw,
        }
    ),
    # a sliding window shorter than the test batch: prefixes must stay visible outside it
    "mistral": lambda **kw: transformers.MistralConfig(
        **{**TINY, **SPECIAL, "num_key_value_heads": 2, "sliding_window": 4, **kw}
    ),
    "qwen2": lambda **kw: transformers.Qwen2Config(**{**TINY, **SPECIAL, "num_key_value_heads": 2, **kw}),
    "qwen3": lambda **kw: transformers.Qwen3Config(
        **{**TINY, **SPECIAL, "num_key_value_heads": 2, "head_dim": 8, **kw}
    ),
    "gemma": lambda **kw: transformers.GemmaConfig(
        **{**TINY, **SPECIAL, "num_key_value_heads": 2, "head_dim": 8, **kw}
    ),
    # soft-capped logits and alternating sliding-window (4) / global layers
    "gemma2": lambda **kw: transformers.Gemma2Config(
        **{**TINY, **SPECIAL, "num_key_value_heads": 2, "head_dim": 8, "sliding_window": 4, **kw}
    ),
    # fused c_attn = [q; k; v] in Conv1D layout (W stored (in, out)), learned absolute positions
    "gpt2": lambda **kw: transformers.GPT2Config(
        **{
            "vocab_size": 120,
            "n_embd": 32,
            "n_layer": 2,
            "n_head": 4,
            "n_inner": 64,
            "n_positions": 64,
            "num_labels": 3,
            **SPECIAL,
            **kw,
        }
    ),
    # fused qkv_proj with grouped-query heads (4 q, 2 kv), fused gate_up_proj, rotary on half of each head
    "phi3": lambda **kw: transformers.Phi3Config(
        **{**TINY, **SPECIAL, "num_key_value_heads": 2, "partial_rotary_factor": 0.5, **kw}
    ),
    # fused Wqkv; layer 0 global, layer 1 local with a window (4) shorter than the test batch
    "modernbert": lambda **kw: transformers.ModernBertConfig(
        **{
            **TINY,
            "pad_token_id": 1,
            "bos_token_id": 0,
            "cls_token_id": 0,
            "eos_token_id": 2,
            "sep_token_id": 2,
            "local_attention": 4,
            "global_attn_every_n_layers": 2,
            **kw,
        }
    ),
}
CONFIGS["t5-encoder"] = CONFIGS["t5"]


class T5EncoderClassifier(transformers.T5PreTrainedModel):
    """``T5EncoderModel`` alone (its base model has no decoder stack) under a linear head on the
    first token, so that the T5 encoder runs every invariant of the table."""

    base_model_prefix = "transformer"
    table_name = "T5EncoderModel"  # docs/arch_table.py shows the model users load

    def __init__(self, config):
        super().__init__(config)
        self.transformer = transformers.T5EncoderModel(config)
        self.classifier = nn.Linear(config.d_model, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        h = self.transformer(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        logits = self.classifier(h[:, 0])  # (B, labels)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


CLASSIFIERS = {
    "bert": BertForSequenceClassification,
    "roberta": RobertaForSequenceClassification,
    "llama": LlamaForSequenceClassification,
    "bart": BartForSequenceClassification,
    "t5": T5ForSequenceClassification,
    "electra": transformers.ElectraForSequenceClassification,
    "distilbert": transformers.DistilBertForSequenceClassification,
    "mistral": transformers.MistralForSequenceClassification,
    "qwen2": transformers.Qwen2ForSequenceClassification,
    "qwen3": transformers.Qwen3ForSequenceClassification,
    "gemma": transformers.GemmaForSequenceClassification,
    "gemma2": transformers.Gemma2ForSequenceClassification,
    "mbart": transformers.MBartForSequenceClassification,
    "t5-encoder": T5EncoderClassifier,
    "deberta-v2": transformers.DebertaV2ForSequenceClassification,
    "gpt2": transformers.GPT2ForSequenceClassification,
    "phi3": transformers.Phi3ForSequenceClassification,
    "modernbert": transformers.ModernBertForSequenceClassification,
}
# the LMs every generation invariant runs on (tests/test_generation.py: cached == uncached decoding
# token for token, beam search, the causal mask with prefix keys in front); decoder-only ones
# generate after left padding
SEQ2SEQ_LMS = {
    "bart": BartForConditionalGeneration,
    "t5": T5ForConditionalGeneration,
    "mbart": transformers.MBartForConditionalGeneration,
}
DECODER_LMS = {
    "llama": LlamaForCausalLM,
    "mistral": transformers.MistralForCausalLM,
    "qwen2": transformers.Qwen2ForCausalLM,
    "qwen3": transformers.Qwen3ForCausalLM,
    "gemma": transformers.GemmaForCausalLM,
    "gemma2": transformers.Gemma2ForCausalLM,
    "gpt2": transformers.GPT2LMHeadModel,
    "phi3": transformers.Phi3ForCausalLM,
}
LMS = {**SEQ2SEQ_LMS, **DECODER_LMS}
# each classifier's task head, trained with every method (peft's modules_to_save)
HEADS = {
    "bert": "classifier",
    "roberta": "classifier",
    "llama": "score",
    "bart": "classification_head",
    "t5": "classification_head",
    "electra": "classifier",
    "distilbert": "classifier",
    "mistral": "score",
    "qwen2": "score",
    "qwen3": "score",
    "gemma": "score",
    "gemma2": "score",
    "mbart": "classification_head",
    "t5-encoder": "classifier",
    "deberta-v2": "classifier",
    "gpt2": "score",
    "phi3": "score",
    "modernbert": "classifier",
}
# (test function, architecture) -> why that shared invariant does not apply there; reported as skipped
NOT_APPLICABLE = {
    ("test_sdpa_and_eager_agree_with_prefix", "gemma2"): "transformers has no sdpa attention for Gemma-2",
    ("test_sdpa_and_eager_agree_with_prefix", "deberta-v2"): "transformers has no sdpa attention for DeBERTa-v2",
}

# architecture -> {preset or design-space case: why it does not run there}; every test
# parametrized with both is reported as skipped with that reason (tests/test_arch_refusals.py
# checks what the library says instead)
_PROMPTED = [name for name, cfg in unipelt.PRESETS.items() if cfg.of(unipelt.PromptConfig)]
NOT_SUPPORTED = {
    "deberta-v2": {
        name: "DeBERTa builds its padding mask inside the model, where a prompt's positions are missing "
        "(arch/deberta_v2.py)"
        for name in _PROMPTED
    },
}
# BitFit trains the bias vectors a model has; these have none (and apply() refuses it there)
NO_BIASES = ("llama", "t5", "t5-encoder", "mistral", "qwen3", "gemma", "gemma2", "phi3", "modernbert")
for _arch in NO_BIASES:
    NOT_SUPPORTED.setdefault(_arch, {})["bitfit"] = "the model has no bias vectors, so BitFit would train nothing"
_FUSED = (
    "peft's LoRA on a fused [q; k; v] map adapts all of it with one A and B; unipelt's q and v LoRAs "
    "own their rows of it, which peft cannot express (tests/test_arch_fused.py checks them by hand)"
)
for _arch in ("gpt2", "phi3", "modernbert"):
    for _test in (
        "test_same_lora_weights_give_the_same_logits_as_peft",
        "test_a_peft_lora_checkpoint_imports_with_identical_logits",
    ):
        NOT_APPLICABLE[(_test, _arch)] = _FUSED
ARCHS = {arch: (lambda arch=arch, **kw: CLASSIFIERS[arch](CONFIGS[arch](**kw))) for arch in CLASSIFIERS}


def build(arch: str = "bert", seed: int = 0, **kw):
    torch.manual_seed(seed)
    return ARCHS[arch](**kw).eval()


def build_lm(arch: str, seed: int = 0, **kw):
    """A tiny causal or seq2seq LM for generation tests."""
    torch.manual_seed(seed)
    return LMS[arch](CONFIGS[arch](**kw)).eval()


def batch(seed: int = 1, b: int = 3, t: int = 9) -> dict:
    """Real tokens start at 5 (clear of the special ids); rows 1 and 2 are padded; every row's
    last real token is eos (2), where BART and T5 classifiers read."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, TINY["vocab_size"], (b, t), generator=g)
    mask = torch.ones_like(ids)
    mask[1, t - 3 :] = 0
    mask[2, t - 5 :] = 0
    ids[mask == 0] = 1
    ids[torch.arange(b), mask.sum(1) - 1] = 2
    return {"input_ids": ids, "attention_mask": mask}


def write_tensors(directory, tensors: dict) -> None:
    """Replace a unipelt checkpoint's tensors, its checksum made to match: a checkpoint edited by
    hand that only the library's own checks can refuse."""
    import json

    from safetensors.torch import save_file

    from unipelt.checkpoint import META, WEIGHTS, _sha256

    save_file(tensors, directory / WEIGHTS)
    meta = json.loads((directory / META).read_text())
    (directory / META).write_text(json.dumps({**meta, "sha256": _sha256(directory / WEIGHTS)}))


@torch.no_grad()
def randomize(model, std: float = 0.05, seed: int = 2, only_pelt: bool = False) -> None:
    """Give every trainable parameter (or only the added ones) a random value, as if trained."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.requires_grad and (not only_pelt or "pelt_" in name):
            p.add_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture(params=sorted(ARCHS))
def arch(request):
    return request.param


def pytest_collection_modifyitems(items):
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        arch = params.get("arch", params.get("lm_arch"))
        reason = NOT_APPLICABLE.get((getattr(item, "originalname", item.name), arch)) or NOT_SUPPORTED.get(
            arch, {}
        ).get(params.get("preset", params.get("name")))
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
