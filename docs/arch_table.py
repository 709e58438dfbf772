"""Print the README's architecture table from the test table (tests/conftest.py): one row per
architecture the invariant tests run on, a ✓ per method where every preset of that method runs
there, and the reason where conftest.NOT_SUPPORTED says it does not.

    python docs/arch_table.py
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import CLASSIFIERS, CONFIGS, LMS, NOT_SUPPORTED  # noqa: E402

import unipelt  # noqa: E402

# method column -> the presets that use it
COLUMNS = {
    "adapters (seq./parallel)": ["adapter", "adapter-houlsby", "parallel-adapter", "scaled-parallel-adapter"],
    "multi-head adapter": ["mh-parallel-adapter"],
    "prefix": ["prefix", "prefix-nogating"],
    "LoRA": ["lora"],
    "DoRA": ["dora"],
    "prompt": ["prompt"],
    "(IA)³": ["ia3"],
    "BitFit": ["bitfit"],
    "UniPELT": ["unipelt-ap", "unipelt-apl", "unipelt-ap-nogate", "unipelt-apl-nogate"],
    "MAM": ["mam", "pa-attn-ffn", "prefix-lora-ffn"],
}


def cell(arch: str, presets: list[str]) -> str:
    refused = [p for p in presets if p in NOT_SUPPORTED.get(arch, {})]
    if not refused:
        return "✓"
    return "—" if len(refused) == len(presets) else "partly: not " + ", ".join(f"`{p}`" for p in refused)


def main() -> None:
    shown = {p for ps in COLUMNS.values() for p in ps}
    assert shown <= set(unipelt.PRESETS)
    missing = set(unipelt.PRESETS) - shown - {"full", "head-only"}  # the baselines are no method's column
    assert not missing, f"give the presets {sorted(missing)} a column in COLUMNS"
    print("| test row | model_type | class | " + " | ".join(COLUMNS) + " | generation (KV cache) |")
    print("|---|---|---|" + "---|" * (len(COLUMNS) + 1))
    notes = {}
    for arch in CLASSIFIERS:
        cells = [cell(arch, presets) for presets in COLUMNS.values()]
        generates = "✓" if arch in LMS else ""
        model_type = CONFIGS[arch]().model_type
        print(
            f"| {arch} | `{model_type}` | `{getattr(CLASSIFIERS[arch], 'table_name', CLASSIFIERS[arch].__name__)}` | "
            + " | ".join(cells)
            + f" | {generates} |"
        )
        # only the reasons of presets the table shows: a design-space case has no cell to mark
        notes.update({why: None for name, why in NOT_SUPPORTED.get(arch, {}).items() if name in shown})
    for reason in notes:
        print(f"\n— / partly: {reason}.")


if __name__ == "__main__":
    main()
