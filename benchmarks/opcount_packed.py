"""What storing a layer's fused weights as one parameter would save: a what-if op count.

    python benchmarks/opcount_packed.py                  # UniPELT-APL, both fused weights packed
    python benchmarks/opcount_packed.py --packed weights # only the attention input's [A_q | A_v | gates]

Today ``blocks.derived`` builds each fused weight from its parameters on every training step
(``[A_q | A_v | w_q | w_v | w_P]`` for ``SharedRead``, ``[W_down | 1 | w_gate]`` and
``[W_up; b_up]`` for the gated adapter), and autograd takes the gradient apart again. Here each
fused weight is made once and handed out as a leaf tensor of its own, as if it were stored that
way: the count is what a packed checkpoint format would dispatch. Gradients reach the stand-in
leaves, not the model's parameters, so this measures ops only; it trains nothing.
"""

import argparse
import weakref

import opcount
import torch

import unipelt.blocks
import unipelt.inject
import unipelt.methods.adapter
import unipelt.methods.lora

NAMES = {"weights": "SharedRead", "read_once_ones": "adapter [W_down | 1 | w_gate]", "up_ones": "adapter [W_up; b_up]"}


def pack(names: set[str]) -> None:
    """Route ``derived`` for ``names`` to leaves made once from the real fused weights."""
    real, leaves = unipelt.blocks.derived, weakref.WeakKeyDictionary()  # owner -> name -> leaf

    def leaf(t):
        return None if t is None else t.detach().clone().requires_grad_(True)

    def derived(owner, name, sources, make):
        if name not in names or not torch.is_grad_enabled():
            return real(owner, name, sources, make)
        mine = leaves.setdefault(owner, {})
        if name not in mine:
            with torch.no_grad():
                made = make()
            mine[name] = tuple(map(leaf, made)) if isinstance(made, tuple) else leaf(made)
        return mine[name]

    for module in (unipelt.blocks, unipelt.methods.adapter, unipelt.methods.lora):
        module.derived = derived
    # the stand-ins take the gradients, so apply()'s check would rightly call the modules idle
    unipelt.inject.check_participation = lambda *args, **kwargs: None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packed", default=",".join(NAMES), help=f"comma-separated, of {', '.join(NAMES)}")
    parser.add_argument("--preset", default="unipelt-apl")
    args = parser.parse_args()
    names = set(args.packed.split(","))
    if names - set(NAMES):
        parser.error(f"unknown fused weight(s): {', '.join(sorted(names - set(NAMES)))}")
    print("today:")
    print(opcount.table(["plain (head only)", args.preset], False))
    pack(names)
    print(f"\npacked ({', '.join(NAMES[n] for n in sorted(names))}):")
    print(opcount.table(["plain (head only)", args.preset], False))


if __name__ == "__main__":
    main()
