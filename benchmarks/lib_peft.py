"""HF peft 0.21: LoRA and prefix tuning only (no bottleneck adapters, gating or MAM)."""

import peft
from minilm import load, trainable

CONFIGS = {
    "lora": lambda: peft.LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=2, target_modules=["query", "value"]),
    "prefix": lambda: peft.PrefixTuningConfig(
        task_type="SEQ_CLS", num_virtual_tokens=10, prefix_projection=True, encoder_hidden_size=512
    ),
}


def _merge(model):
    return model.merge_and_unload()


def build(method):
    if method not in CONFIGS:
        return None
    model = peft.get_peft_model(load(), CONFIGS[method]())
    return model, trainable(model), _merge if method == "lora" else None
