"""Tokenizing inputs of any size at a cost bounded by ``max_length``, with training's truncation.

A fast (Rust) tokenizer truncating a sentence pair builds every combination of the two sides'
overflowing windows: memory grows with the square of the input (a 14 KB pair: 0.28 GB; 140 KB:
2.4 GB), so one long request could take a server down. Two bounds keep the cost linear in
``max_length`` whatever arrives:

1. before any tokenizer runs, each side is cut to ``max_length * CHARS_PER_TOKEN`` characters;
2. a side still longer than ``max_length`` characters is cut after its first ``2 * max_length``
   tokens (the side alone, without truncation: linear) before the truncating call.

``truncation=True`` (longest first) keeps at most ``max_length`` tokens of either side, so cut 2
leaves the kept tokens as they were: the margin of ``max_length`` tokens absorbs a last word that
a cut re-tokenizes differently. Cut 1 changes what is kept when a side's first tokens average
more than ``CHARS_PER_TOKEN / 2`` characters (long runs of whitespace, or words the vocabulary
maps to one unknown token), and when both sides of a pair exceed the budget: longest-first gives
the last token of an odd split to the side that was longer before the cut, which the cut can
make the shorter one (one token at the boundary moves to the other side). Such an input is
reported as truncated.
"""

from __future__ import annotations

from typing import Union

Text = Union[str, tuple[str, str]]

CHARS_PER_TOKEN = 32  # real text averages about 4-6 characters per token


def position_limit(config) -> int | None:
    """How many token positions the model's position table holds (None: no table, rotary)."""
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit and config.model_type in ("roberta", "xlm-roberta"):
        limit -= (config.pad_token_id or 0) + 1  # their positions start after the padding index
    return limit


def pad(tokenizer, encoded: list[dict]) -> dict:
    """A batch of encodings padded on the right, whatever side the tokenizer pads (Llama's and
    Gemma's pad left): a left-padded row's tokens move by its number of pads, and prefix keys,
    which have no position, would then score against other positions in another batch."""
    return tokenizer.pad(encoded, padding_side="right", return_tensors="pt")


def char_budget(max_length: int) -> int:
    """The characters per side a tokenizer ever sees for inputs truncated to ``max_length`` tokens."""
    return max_length * CHARS_PER_TOKEN


def bounded(text: Text, max_length: int, from_end: bool = False) -> tuple[Text, bool]:
    """``text`` with each side cut to ``char_budget(max_length)`` characters, and whether any was;
    ``from_end``: the last ones are kept (a tokenizer that truncates on the left keeps the end)."""
    budget = char_budget(max_length)
    sides = text if isinstance(text, tuple) else (text,)
    if all(len(s) <= budget for s in sides):
        return text, False
    cut = tuple(s[-budget:] if from_end else s[:budget] for s in sides)
    return (cut if isinstance(text, tuple) else cut[0]), True


def _tokens(tokenizer, side: str) -> list[tuple[int, int]]:
    """The character span of each of ``side``'s tokens (fast tokenizers report them)."""
    return tokenizer(side, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]


def _order(counts: list[int]) -> list[bool]:
    return [n > min(counts) for n in counts]


def _shortened(tokenizer, sides: tuple[str, ...], keep: int) -> tuple[str, ...]:
    """Each side cut after its first ``keep`` tokens, a pair's longer side after ``keep + 1`` (its
    last ones where the tokenizer truncates on the left).

    Longest-first truncation of a pair reads only which side is longer and, up to
    ``max_length``, the shorter one's length: with ``keep`` over ``max_length`` and the order
    kept, it keeps the same tokens of each side. Should a cut word tokenize so differently that
    the order changes, the sides stay as they were (bounded by the character budget).
    """
    spans = [_tokens(tokenizer, s) for s in sides]
    counts = [len(t) for t in spans]
    left = from_end(tokenizer)
    cut = tuple(
        s if n <= keep + longer else (s[t[n - keep - longer][0] :] if left else s[: t[keep + longer - 1][1]])
        for s, t, n, longer in zip(sides, spans, counts, _order(counts))
    )
    if cut == sides or _order([len(_tokens(tokenizer, s)) for s in cut]) == _order(counts):
        return cut
    return sides


def truncated(tokenizer, text: Text, max_length: int) -> dict:
    """The tokenizer's encoding of ``text`` truncated to ``max_length`` tokens, as training
    truncates (``truncation=True``), at a cost linear in ``max_length``. ``text`` has passed
    ``bounded`` already."""
    sides = text if isinstance(text, tuple) else (text,)
    # a slow tokenizer builds no overflow windows; a side of max_length characters has few tokens
    if getattr(tokenizer, "is_fast", False) and any(len(s) > max_length for s in sides):
        sides = _shortened(tokenizer, sides, 2 * max_length)
    return call(tokenizer, sides, truncation=True, max_length=max_length)


def call(tokenizer, sides: tuple[str, ...], **kwargs) -> dict:
    """The tokenizer's encoding of one text, a pair as a batch of one: a single call reads an
    empty second side as no pair (``text_pair=""`` is falsy) where a batch call, as training's,
    encodes it as a pair with an empty second segment."""
    if len(sides) == 1:
        return dict(tokenizer(sides[0], **kwargs))
    batch = tokenizer([sides[0]], [sides[1]], **kwargs)
    return {key: values[0] for key, values in batch.items()}


def from_end(tokenizer) -> bool:
    """Whether the tokenizer's truncation keeps a text's end."""
    return getattr(tokenizer, "truncation_side", "right") == "left"


def encode(tokenizer, text: Text, max_length: int) -> dict:
    """One input's encoding truncated to ``max_length`` tokens, both bounds applied."""
    return truncated(tokenizer, bounded(text, max_length, from_end(tokenizer))[0], max_length)
