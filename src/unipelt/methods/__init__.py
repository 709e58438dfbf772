"""The Δh modules: each method is a ``LowRank`` block plus a composition weight (blocks.py)."""
