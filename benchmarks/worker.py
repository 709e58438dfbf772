"""One measurement in a fresh process: ``python worker.py LIBRARY METHOD DEVICE [compile] [bf16]`` prints JSON.

A process per (library, method) keeps peak memory honest and lets each library run in its own
environment (AdapterHub ``adapters`` needs transformers 4.57, unipelt and peft need 5.x).
"""

import importlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from measure import measure  # noqa: E402

METHODS = ("frozen", "full", "lora", "prefix", "adapter", "unipelt-ap", "unipelt-apl", "mam")


def main() -> None:
    library, method, device = sys.argv[1:4]
    compiled, bf16 = "compile" in sys.argv[4:], "bf16" in sys.argv[4:]
    torch.manual_seed(0)
    if os.environ.get("BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    lib = importlib.import_module(f"lib_{library}")
    built = lib.build(method)
    if built is None:
        print(json.dumps({"library": library, "method": method, "skipped": "no equivalent"}))
        return
    model, trainable, prepare = built
    result = measure(
        model, device, trainable, prepare, load_plain=getattr(lib, "load", None), compile=compiled, bf16=bf16
    )
    label = f"{library} (compiled)" if compiled else library
    print(json.dumps({"library": label, "method": method, **result}))


if __name__ == "__main__":
    main()
