"""AdapterHub adapters 1.3.0 (runs on transformers 4.57.x in its own environment).

Configs are set to match unipelt's presets on MiniLM (d=384): its reduction_factor is d / r, so
the Pfeiffer adapter uses 384/48 = 8 and MAM's parallel adapter 384/512 = 0.75; MAM's prefix
network is He et al.'s 800 wide (unipelt's ``mam`` preset), where adapters' default is 512.
"""

import adapters
from adapters import ConfigUnion, LoRAConfig, ParBnConfig, PrefixTuningConfig, SeqBnConfig
from minilm import load, trainable

D = 384
CONFIGS = {
    "lora": lambda: LoRAConfig(r=8, alpha=2, attn_matrices=["q", "v"]),
    "prefix": lambda: PrefixTuningConfig(prefix_length=10, bottleneck_size=512),
    "adapter": lambda: SeqBnConfig(reduction_factor=D / 48),
    "unipelt-apl": lambda: ConfigUnion(
        LoRAConfig(r=8, alpha=2, attn_matrices=["q", "v"], use_gating=True),
        PrefixTuningConfig(prefix_length=10, bottleneck_size=512, use_gating=True),
        SeqBnConfig(reduction_factor=D / 48, use_gating=True),
    ),
    "mam": lambda: ConfigUnion(
        PrefixTuningConfig(prefix_length=30, bottleneck_size=800), ParBnConfig(reduction_factor=D / 512, scaling=4.0)
    ),
}


def build(method):
    if method not in CONFIGS:
        return None
    model = load()
    adapters.init(model)
    model.add_adapter("bench", config=CONFIGS[method]())
    model.train_adapter("bench")
    model.classifier.requires_grad_(True)
    counted = trainable(model)

    def prepare(m):
        if method == "lora":
            m.merge_adapter("bench")
        return m

    return model, counted, prepare
