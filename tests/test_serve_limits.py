"""unipelt serve under hostile input (issue 29): a long pair costs memory bounded by max_length,
one bad row fails only its own request, every flag is checked, and a bad checkpoint loaded while
serving is refused with a 4xx JSON answer while predictions go on."""

import asyncio
import json
import subprocess
import sys
import textwrap

import pytest
from test_serve import TASKS, alone, assert_answer, client, engine_for, run, served, single, tokenizer  # noqa: F401

from unipelt import MultiTask, encoding
from unipelt.offline import DEFAULT_MODEL, model_path
from unipelt.serve import Row, ServeError

pytest.importorskip("fastapi")


# ---- 1. a long input costs what max_length allows, not what it is
def _minilm_tokenizer():
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_path(DEFAULT_MODEL))
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"the offline MiniLM tokenizer is not installed: {e}")


_PEAK = textwrap.dedent(
    """
    import resource, sys
    from transformers import AutoTokenizer
    from unipelt import encoding
    tok = AutoTokenizer.from_pretrained(sys.argv[1])
    n = int(sys.argv[2])
    tok("warm up", "the tokenizer", truncation=True, max_length=128)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    encoding.encode(tok, ("word " * n, "x " * n), 128)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    """
)


def _peak_mb(words: int) -> float:
    """The peak memory (MB) that encoding one pair of ``words`` words per side adds, in a fresh process."""
    _minilm_tokenizer()
    out = subprocess.run(
        [sys.executable, "-c", _PEAK, str(model_path(DEFAULT_MODEL)), str(words)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def test_a_long_pair_costs_no_more_memory_than_a_short_one():
    # unbounded, 6,000 words a side took about 1 GB (the 100,000: 22 GB and an OOM kill)
    short, long = _peak_mb(20), _peak_mb(6000)
    assert long < short + 32, f"encoding a 42 KB pair added {long:.0f} MB at peak, a short one {short:.0f} MB"


@pytest.mark.parametrize("seed", range(6))
def test_bounded_encoding_keeps_what_truncation_keeps(seed):
    """The two cuts never change the tokens that truncation keeps, for real text near the cuts."""
    import random

    tok = _minilm_tokenizer()
    rng = random.Random(seed)
    words = ["the", "unaffable", "cat", "tokenization", "a", "übermäßig", "naïve", ",", "9.5", "🙂", "running"]
    limit = rng.choice([8, 16, 64])

    def text():
        return " ".join(rng.choice(words) for _ in range(rng.randint(0, 5 * limit)))

    for _ in range(20):
        pair = (text(), text())
        assert encoding.encode(tok, pair, limit) == dict(tok(*pair, truncation=True, max_length=limit))
        assert encoding.encode(tok, pair[0], limit) == dict(tok(pair[0], truncation=True, max_length=limit))


def test_the_character_budget_cuts_each_side_and_says_so():
    budget = encoding.char_budget(4)
    assert encoding.bounded(("a" * (budget + 5), "b"), 4) == (("a" * budget, "b"), True)
    assert encoding.bounded("short", 4) == ("short", False)


def test_the_server_answers_a_long_pair_as_the_library_does(served):  # noqa: F811
    # the request, scaled to the tiny tokenizer's words: 600 KB, under the 1 MiB body limit
    pair = ["w1 " * 100000, "w2 " * 100000]
    library = MultiTask(__import__("conftest").build())
    library.add("rte", served / "ckpt" / "rte")

    async def go():
        async with client(engine_for(served, tasks=("rte",))) as c:
            return await c.post("/v1/predict", json={"task": "rte", "inputs": [pair]})

    r = run(go())
    assert r.status_code == 200, r.text
    answer = r.json()["outputs"][0]
    assert answer["truncated"] is True
    assert_answer(answer, alone(single(served, "rte"), pair), TASKS["rte"][1])
    ref = library.predict([tuple(pair)], ["rte"], tokenizer())[0]
    assert answer["label"] == ref["label"]


# ---- 2. one bad row fails only itself
def test_a_lone_surrogate_fails_only_its_own_request(served):  # noqa: F811
    async def go():
        async with client(engine_for(served)) as c:
            good = {"task": "sst2", "inputs": ["w1 w2", "w3"]}
            bad = {"task": "sst2", "inputs": ["\udfff"]}
            return await asyncio.gather(
                c.post("/v1/predict", json=good),
                c.post("/v1/predict", json=bad),
                c.post("/v1/predict", json={"task": "rte", "inputs": [["w1", "x\ud800y"]]}),
                c.post("/v1/predict", json=good),
            )

    first, bad, bad_pair, last = run(go())
    assert first.status_code == last.status_code == 200
    assert first.json() == last.json()
    for r in (bad, bad_pair):
        assert r.status_code == 422 and r.headers["content-type"] == "application/json"
        assert "inputs[0] is not valid Unicode text" in r.json()["error"]


def test_a_row_the_tokenizer_refuses_in_a_batch_fails_alone(served):  # noqa: F811
    """The engine's own guard, behind the request check: the batch is retried row by row."""
    engine = engine_for(served)
    out = engine.run([Row("sst2", "w1 w2"), Row("sst2", "\udfff"), Row("rte", ("w1", "w3"))])
    assert isinstance(out[1], ServeError) and out[1].status == 422 and "cannot be tokenized" in out[1].message
    assert out[0] == engine.run([Row("sst2", "w1 w2")])[0]
    assert out[2] == engine.run([Row("rte", ("w1", "w3"))])[0]


def test_a_row_the_model_fails_on_fails_alone(served, monkeypatch):  # noqa: F811
    engine = engine_for(served)
    forward = engine.mt.__class__.__call__

    def fails_on_w9(mt, input_ids, **kw):
        if (input_ids == tokenizer().convert_tokens_to_ids("w9")).any():
            raise RuntimeError("w9 breaks the model")
        return forward(mt, input_ids, **kw)

    monkeypatch.setattr(type(engine.mt), "__call__", fails_on_w9)
    out = engine.run([Row("sst2", "w1"), Row("sst2", "w9"), Row("sst2", "w2")])
    assert isinstance(out[1], ServeError) and out[1].status == 500 and "w9 breaks the model" in out[1].message
    assert all(isinstance(a, dict) and "label" in a for a in (out[0], out[2]))

