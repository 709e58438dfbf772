"""unipelt serve under hostile input (issue 29): a long pair costs memory bounded by max_length,
one bad row fails only its own request, every flag is checked, and a bad checkpoint loaded while
serving is refused with a 4xx JSON answer while predictions go on."""

import asyncio
import json
import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_serve import TASKS, alone, assert_answer, client, engine_for, run, served, single, tokenizer  # noqa: F401

from unipelt import MultiTask, encoding
from unipelt.errors import SharedInputError
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
    # unbounded, 6,000 words a side took 880 MB and 9 s (the 100,000: 22 GB and an OOM kill)
    short, long = _peak_mb(20), _peak_mb(6000)
    assert long < short + 32, f"encoding a 42 KB pair added {long:.0f} MB at peak, a short one {short:.0f} MB"


_BATCH_PEAK = textwrap.dedent(
    """
    import resource, sys
    from types import SimpleNamespace
    from transformers import AutoTokenizer
    from unipelt.serve.engine import Engine, Row
    engine = object.__new__(Engine)  # only its encoding: a tokenizer and each task's limit
    engine.tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
    engine.info = {"t": SimpleNamespace(max_length=512)}
    engine._encode([Row("t", ("warm", "up"))])
    rows = [Row("t", ("!" * 10**6, "?" * 10**6)) for _ in range(int(sys.argv[2]))]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert all(len(e[0]["input_ids"]) == 512 for e in engine._encode(rows))
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    """
)


def test_a_batch_of_long_rows_is_tokenized_a_few_rows_at_a_time():
    """The server tokenized a whole batch in one call: 64 pairs of punctuation (one token per
    character) at MiniLM's character budget of 16,384 per side took 440 MB at once."""
    _minilm_tokenizer()

    def peak(rows: int) -> float:
        args = [sys.executable, "-c", _BATCH_PEAK, str(model_path(DEFAULT_MODEL)), str(rows)]
        out = subprocess.run(args, capture_output=True, text=True, timeout=300, check=True)
        return float(out.stdout.strip().splitlines()[-1])

    one, many = peak(1), peak(64)
    assert many < one + 100, f"64 long rows added {many:.0f} MB at peak, one {one:.0f} MB"


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
        trained = tok([pair[0]], [pair[1]], truncation=True, max_length=limit)  # a batch, as training's
        assert encoding.encode(tok, pair, limit) == {key: values[0] for key, values in trained.items()}
        assert encoding.encode(tok, pair[0], limit) == dict(tok(pair[0], truncation=True, max_length=limit))


def test_the_character_budget_cuts_each_side_and_says_so():
    budget = encoding.char_budget(4)
    assert encoding.bounded(("a" * (budget + 5), "b"), 4) == (("a" * budget, "b"), True)
    assert encoding.bounded("short", 4) == ("short", False)


def test_the_server_answers_a_long_pair_as_the_library_does(served):  # noqa: F811
    # long enough that unbounded truncation would cost about 0.2 GB (the 700 KB: 22 GB,
    # too much to risk should the bound break; test_a_long_pair_costs_... measures the bound)
    pair = ["w1 " * 2000, "w2 " * 2000]
    library = MultiTask(__import__("conftest").build())
    library.add("rte", served / "ckpt" / "rte")

    async def go():
        async with client(engine_for(served, tasks=("rte",))) as c:
            return await c.post("/v1/predict", json={"task": "rte", "inputs": [pair]})

    r = run(go())
    assert r.status_code == 200, r.text
    answer = r.json()["outputs"][0]
    assert answer["truncated"] is True
    # what training's truncation keeps of it, from a pair short enough to tokenize unbounded
    kept = ("w1 " * 64, "w2 " * 64)
    assert_answer(answer, alone(single(served, "rte"), kept), TASKS["rte"][1])
    assert library.predict([tuple(pair)], ["rte"], tokenizer()) == library.predict([kept], ["rte"], tokenizer())


def test_a_queued_row_holds_no_more_text_than_its_task_reads(served, monkeypatch):  # noqa: F811
    """Rows wait in the queue cut to the character budget: 8,192 queued rows of almost 1 MiB each
    (the body limit) held 8 GiB, where the budget lets each hold what max_length tokens read."""
    from unipelt.serve.app import LocalService

    queued, submit = [], LocalService.predict

    async def spy(self, rows):
        queued.extend(rows)
        return await submit(self, rows)

    monkeypatch.setattr(LocalService, "predict", spy)
    texts = ["w1 " * 100_000, ["w1 " * 100_000, "w2"]]

    async def go():
        async with client(engine_for(served, tasks=("sst2", "rte"))) as c:
            return [await c.post("/v1/predict", json={"task": t, "inputs": [x]}) for t, x in zip(TASKS, texts)]

    for r in run(go()):
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["truncated"] is True
    budget = encoding.char_budget(64)  # the tiny model's 64 positions
    assert len(queued[0].text) == budget and [len(side) for side in queued[1].text] == [budget, 2]


# ---- 2. one bad row fails only itself
def test_a_lone_surrogate_fails_only_its_own_request(served):  # noqa: F811
    async def go():
        async with client(engine_for(served)) as c:

            def post(body: dict):  # json.dumps escapes the surrogate as JSON allows: "\udfff"
                return c.post("/v1/predict", content=json.dumps(body), headers={"content-type": "application/json"})

            good = {"task": "sst2", "inputs": ["w1 w2", "w3"]}
            return await asyncio.gather(
                post(good),
                post({"task": "sst2", "inputs": ["\udfff"]}),
                post({"task": "rte", "inputs": [["w1", "x\ud800y"]]}),
                post(good),
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
    calls = []
    monkeypatch.setattr(
        type(engine.mt), "__call__", lambda mt, input_ids, **kw: calls.append(1) or fails_on_w9(mt, input_ids, **kw)
    )
    out = engine.run([Row("sst2", f"w{i % 8}") for i in range(63)] + [Row("sst2", "w9")])
    assert [isinstance(a, ServeError) for a in out] == [False] * 63 + [True]
    assert len(calls) <= 1 + 2 * 6  # halves down to the bad row, not each of the 64 alone


def test_a_task_that_cannot_share_a_batch_is_answered_in_a_batch_of_its_own(served, monkeypatch):  # noqa: F811
    """As BitFit on DeBERTa's relative positions (MultiTask refuses it mixed): a failed mixed batch
    is answered task by task, one forward each, not halved down to single rows."""
    engine = engine_for(served)
    forward, calls = engine.mt.__class__.__call__, []

    def refuses_mixed(mt, input_ids, tasks, **kw):
        calls.append(tasks)
        if len(set(tasks)) > 1:
            raise SharedInputError("a Linear with per-task changes receives one input for the whole batch")
        return forward(mt, input_ids, tasks=tasks, **kw)

    # of one length (5 tokens), so that the batch stays interleaved: halves would each hold both tasks
    rows = [Row("sst2", f"w{i} w2 w3") if i % 2 else Row("rte", (f"w{i}", "w1")) for i in range(16)]
    answers = {t: iter(engine.run([r for r in rows if r.task == t])) for t in ("sst2", "rte")}
    expected = [next(answers[r.task]) for r in rows]
    monkeypatch.setattr(type(engine.mt), "__call__", refuses_mixed)
    assert engine.run(rows) == expected
    assert sorted(map(tuple, calls[1:])) == [("rte",) * 8, ("sst2",) * 8]


# ---- 3. every flag checked; a dead batcher is reported
FLAGS = [
    (["--max-wait-ms", "nan"], "--max-wait-ms must be a number from 0 to 10000"),
    (["--max-wait-ms", "inf"], "--max-wait-ms must be a number"),
    (["--max-wait-ms", "-1"], "--max-wait-ms must be a number"),
    (["--max-wait-ms", "3000", "--request-timeout", "2"], "--max-wait-ms must be under --request-timeout (2000 ms)"),
    (["--max-wait-ms", "2000", "--request-timeout", "2"], "--max-wait-ms must be under"),  # answered only 504s
    (["--request-timeout", "0"], "--request-timeout must be a number from 0.001 to 3600"),
    (["--request-timeout", "-5"], "--request-timeout must be"),
    (["--request-timeout", "nan"], "--request-timeout must be"),
    (["--request-timeout", "inf"], "--request-timeout must be"),
    (["--port", "99999"], "--port must be from 0 to 65535, got 99999"),
    (["--port", "-1"], "--port must be from 0 to 65535"),
    (["--max-batch", "0"], "--max-batch must be a number from 1 to 8192"),
    (["--max-batch", "100000"], "--max-batch must be"),
    (["--max-inputs", "-3"], "--max-inputs must be"),
    (["--max-body-kb", "0"], "--max-body-kb must be from 1 to 65536"),
    (["--max-length", "0"], "--max-length must be from 1"),
    (["--replicas", "0"], "--replicas must be from 1"),
    (["--cpus-per-replica", "nan"], "--cpus-per-replica must be a number above 0"),
    (["--admin-token", "short"], "at least 16 characters"),
    (["--max-batch-tokens", "0"], "--max-batch-tokens must be from 1"),
    (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    (["--device", "meta"], "--device must be auto, cpu, cuda or cuda:N"),
    (["--device", "cuda:99"], "CUDA device(s) here"),
    (["--device", "cuda", "--backend", "ray"], "--device is for --backend local"),
    (["--max-batch-tokens", "4096", "--backend", "ray"], "--max-batch-tokens is for --backend local"),  # ignored
]


@pytest.mark.parametrize("flags, message", FLAGS, ids=[" ".join(f) for f, _ in FLAGS])
def test_every_serve_flag_is_checked_before_anything_loads(served, capsys, flags, message):  # noqa: F811
    from unipelt.cli import main

    code = main(["serve", "--model", str(served / "base"), "--task", f"sst2={served / 'ckpt' / 'sst2'}", *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("unipelt: error: ") and message in err, err
    assert "Traceback" not in err


def test_health_reports_a_dead_batch_worker_and_requests_are_refused_at_once(served):  # noqa: F811
    import httpx

    from unipelt.serve.app import LocalService, ServeSettings, create_app

    settings = ServeSettings(request_timeout_s=30)
    service = LocalService(engine_for(served, tasks=("sst2",)), settings)
    app = create_app(service, settings)

    async def go():
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as c,
        ):
            assert (await c.get("/health")).json()["status"] == "ok"
            service.batcher.worker.cancel()  # as if a bug had ended it
            await asyncio.sleep(0.01)
            health = await c.get("/health")
            r = await asyncio.wait_for(c.post("/v1/predict", json={"task": "sst2", "inputs": ["w1"]}), 5)
            return health, r

    health, r = run(go())
    assert health.status_code == 503 and health.json()["status"] == "error"
    assert "the batch worker was cancelled" in health.json()["error"]
    assert r.status_code == 503 and "the server cannot answer" in r.json()["error"]


# ---- 4. a bad checkpoint loaded while serving: a 4xx JSON answer, the served tasks untouched
def _copy(served, root, name: str, source: str = "spare"):  # noqa: F811
    import shutil

    shutil.copytree(served / "ckpt" / source, root / name)
    return root / name


def _edit_meta(directory, edit) -> None:
    path = directory / "unipelt.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _poison(directory) -> None:
    """One added tensor set to NaN, the checksum updated: a checkpoint that loads cleanly."""
    import hashlib

    import torch
    from safetensors.torch import load_file, save_file

    weights = directory / "unipelt.safetensors"
    tensors = load_file(weights)
    name = next(n for n in tensors if "pelt_" in n)
    tensors[name][0] = float("nan")
    save_file(tensors, weights)

    def checksum(meta):
        meta["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()

    _edit_meta(directory, checksum)
    assert torch.isnan(load_file(weights)[name]).any()


def _huge_prefix(served, root):  # noqa: F811
    """A 15 KB prefix checkpoint (the prefix stored folded) whose config asks for a network 3e6 wide."""
    from test_serve import save_task

    import unipelt

    directory = root / "huge"
    save_task(directory, "prefix", ["no", "yes"], seed=3)

    def widen(meta):
        meta["config"]["methods"][0]["mid_dim"] = 3_000_000

    _edit_meta(directory, widen)
    assert unipelt.PRESETS["prefix"].of(unipelt.PrefixConfig)[0].mid_dim == 512
    return directory


def test_bad_checkpoints_loaded_while_serving_get_a_4xx_json_answer(served, tmp_path):  # noqa: F811
    import time

    from test_serve import TOKEN, auth, inputs_for

    root = tmp_path / "tasks"
    root.mkdir()
    _poison(_copy(served, root, "nan"))
    _edit_meta(_copy(served, root, "labels"), lambda m: m.update(task={"num_labels": 2, "id2label": {"x": 1, "y": 2}}))
    (_copy(served, root, "nested") / "unipelt.json").write_text("[" * 100_000 + "]" * 100_000)
    _edit_meta(_copy(served, root, "task-list"), lambda m: m.update(task=[1, 2]))
    _huge_prefix(served, root)
    _copy(served, root, "sst2", source="sst2")
    engine = engine_for(served, tasks=("sst2",))
    inputs = inputs_for("sst2", 3, seed=2)
    cases = {
        "nan": (422, "holds NaN or infinite values"),
        "labels": (422, "cannot be served"),
        "nested": (422, "cannot be served"),
        "task-list": (None, None),  # a task block that is not a table is ignored: it may load
        "huge": (422, "asks for"),
        "spare\u0000x": (400, "NUL"),
    }

    async def go():
        async with client(engine, admin_token=TOKEN, tasks_dir=root) as c:
            before = (await c.post("/v1/predict", json={"task": "sst2", "inputs": inputs})).json()
            for i, (path, (status, message)) in enumerate(cases.items()):
                start = time.perf_counter()
                r = await c.post(f"/v1/tasks/t{i}", json={"path": path}, headers=auth())
                took = time.perf_counter() - start
                assert r.headers["content-type"] == "application/json", (path, r.text)
                if status is None:
                    assert r.status_code in (201, 422), (path, r.text)
                    continue
                assert r.status_code == status and message in r.json()["error"], (path, r.text)
                assert took < 10, f"{path}: refusing it took {took:.1f} s"
            names = [t["name"] for t in (await c.get("/v1/tasks")).json()["tasks"]]
            after = (await c.post("/v1/predict", json={"task": "sst2", "inputs": inputs})).json()
            return before, after, names

    before, after, names = run(go())
    assert after == before
    assert not {"t0", "t1", "t2", "t4", "t5"} & set(names)


# ---- 5. fuzz: any request body gets a JSON answer with a 2xx/4xx status, any flag value a clear refusal

TEXT = st.text(st.characters(categories=["Ll", "Lu", "Nd", "Zs", "Cc", "Cs", "So"]), max_size=12) | st.sampled_from(
    ["w1 w2", "w3", "", "w1 " * 400]
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=12,
)
INPUTS = st.lists(TEXT | st.lists(TEXT, min_size=1, max_size=3) | JSON, max_size=5)
BODIES = (
    st.fixed_dictionaries({"task": st.sampled_from(["sst2", "rte", "nope"]) | JSON, "inputs": INPUTS})
    | st.fixed_dictionaries({"task": st.sampled_from(["sst2", "rte"])}, optional={"inputs": JSON, "x": JSON})
    | JSON
)


@pytest.fixture(scope="module")
def fuzz_engine(served):  # noqa: F811
    return engine_for(served, tasks=("sst2", "rte"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies=st.lists(BODIES, min_size=1, max_size=4))
def test_random_request_bodies_get_json_answers_and_the_server_keeps_serving(fuzz_engine, bodies):
    async def go():
        async with client(fuzz_engine, max_inputs=4) as c:

            def post(body):
                return c.post("/v1/predict", content=json.dumps(body), headers={"content-type": "application/json"})

            answers = await asyncio.gather(*(post(b) for b in bodies))  # one mixed batch where they fit
            ok = await post({"task": "sst2", "inputs": ["w1 w2"]})
            return answers, ok

    answers, ok = run(go())
    for body, r in zip(bodies, answers):
        assert r.status_code in (200, 400, 404, 413, 422), (body, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json", (body, r.text)
        assert ("outputs" in r.json()) == (r.status_code == 200), (body, r.text)
    assert ok.status_code == 200


NUMBERS = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**6), 10**6)


@settings(max_examples=200, deadline=None)
@given(wait=NUMBERS, timeout=NUMBERS, batch=st.integers(-5, 10**5), inputs=st.integers(-5, 10**5))
def test_random_settings_are_refused_with_the_flag_or_make_a_working_batcher(wait, timeout, batch, inputs):
    import math

    from unipelt.serve.app import ServeSettings

    try:
        s = ServeSettings(max_wait_ms=wait, request_timeout_s=timeout, max_batch=batch, max_inputs=inputs)
    except ValueError as e:
        assert str(e).startswith("--") and "must be" in str(e)
        return
    assert math.isfinite(s.max_wait_ms) and math.isfinite(s.request_timeout_s)
    assert 0 <= s.max_wait_ms < s.request_timeout_s * 1000 and s.request_timeout_s > 0
    assert 1 <= s.max_batch <= s.max_queued_rows and 1 <= s.max_inputs <= s.max_queued_rows


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    flag=st.sampled_from(["--port", "--max-length", "--max-body-kb", "--replicas", "--max-batch", "--max-wait-ms"]),
    value=st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e309", "99999999", "x", ""]),
)
def test_random_flag_values_end_in_one_error_line(served, capsys, flag, value):  # noqa: F811
    from unipelt.cli import main

    assume(not (value == "0" and flag in ("--port", "--max-wait-ms")))  # valid: the server would start
    code = main(["serve", "--task", f"sst2={served / 'ckpt' / 'sst2'}", "--model", str(served / "base"), flag, value])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "error:" in err.splitlines()[-1]


# ---- 6. races with loading, paths and names that cannot be resolved, the task limit, metrics
def test_a_row_is_not_answered_by_a_task_loaded_since_under_its_name(served):  # noqa: F811
    """A row queued for 'qa' (single sentences, labels no/yes), then 'qa' unloaded and another
    checkpoint (sentence pairs, other labels) loaded under that name before the batch runs: the
    row gets a 404, as rows of an unloaded task do, not an answer from a task it was never
    checked against."""
    from unipelt.serve import TaskSpec

    engine = engine_for(served, tasks=("sst2",))
    engine.add("qa", TaskSpec(path=served / "ckpt" / "spare"))
    checked = engine.check("qa", ["w1 w2"])
    engine.remove("qa")
    engine.add("qa", TaskSpec(path=served / "ckpt" / "rte", pairs=True))
    [answer] = engine.run([Row("qa", "w1 w2", checked)])
    assert isinstance(answer, ServeError) and answer.status == 404
    [ok] = engine.run([Row("qa", ("w1", "w2"), engine.check("qa", [("w1", "w2")]))])
    assert ok["label"] in ("entailment", "not_entailment")


def test_a_request_checked_while_its_task_is_removed_gets_a_404(served, monkeypatch):  # noqa: F811
    """check() runs on the event loop without the engine's lock, beside a DELETE in a worker
    thread: in every state of the removal it answers 404 (or passes), never a KeyError (500)."""
    engine = engine_for(served, tasks=("sst2", "rte"))
    seen = []
    real_remove = MultiTask.remove

    def remove_and_check(self, name):
        for step in ("before", "after"):
            try:
                engine.check(name, [("w1", "w2")])
                seen.append((step, "passed"))
            except Exception as e:  # noqa: BLE001 - the test records which
                seen.append((step, type(e).__name__, getattr(e, "status", None)))
            if step == "before":
                real_remove(self, name)

    monkeypatch.setattr(MultiTask, "remove", remove_and_check)
    engine.remove("rte")
    assert seen == [("before", "ServeError", 404), ("after", "ServeError", 404)]
    assert [t["name"] for t in engine.tasks()] == ["sst2"]


def test_load_paths_that_cannot_be_resolved_get_a_400(served, tmp_path):  # noqa: F811
    from test_serve import TOKEN, auth

    root = tmp_path / "tasks"
    root.mkdir()
    (root / "loop").symlink_to(root / "loop")
    engine = engine_for(served, tasks=("sst2",))

    async def go():
        async with client(engine, admin_token=TOKEN, tasks_dir=root) as c:
            out = []
            for path in ("\udfff", "a" * 300, "x/" * 3000, "loop"):
                body = json.dumps({"path": path}).encode()  # a lone surrogate as JSON spells it: \\udfff
                r = await c.post("/v1/tasks/t", content=body, headers={**auth(), "Content-Type": "application/json"})
                out.append((r.status_code, r.headers["content-type"], r.json()["error"]))
            return out

    for status, kind, error in run(go()):
        assert status == 400 and kind == "application/json", error
    assert list(engine.info) == ["sst2"]


def test_weights_are_scanned_for_nan_only_after_the_checksum_and_sizes_pass(served, tmp_path):  # noqa: F811
    """A file that fails its checksum is refused for that, before its values are read: the scan
    reads every tensor, so a file with a large foreign tensor would cost memory first."""
    from safetensors.torch import load_file, save_file

    from unipelt.serve import TaskSpec

    directory = _copy(served, tmp_path, "junk")
    tensors = load_file(directory / "unipelt.safetensors")
    tensors["junk"] = __import__("torch").full((1000,), float("nan"))
    save_file(tensors, directory / "unipelt.safetensors")  # checksum not updated
    engine = engine_for(served, tasks=("sst2",))
    with pytest.raises(ServeError, match="does not match the checksum") as refused:
        engine.add("junk", TaskSpec(path=directory))
    assert refused.value.status == 422 and list(engine.info) == ["sst2"]


def test_the_server_holds_at_most_max_tasks(served, capsys):  # noqa: F811
    from unipelt.cli import main
    from unipelt.serve import Engine, TaskSpec

    engine = engine_for(served, tasks=("sst2", "rte"), max_tasks=2)
    with pytest.raises(ServeError, match=r"limit of 2 tasks \(--max-tasks\)") as refused:
        engine.add("qa", TaskSpec(path=served / "ckpt" / "spare"))
    assert refused.value.status == 409 and list(engine.info) == ["sst2", "rte"]
    engine.remove("rte")
    engine.add("qa", TaskSpec(path=served / "ckpt" / "spare"))
    with pytest.raises(Exception, match="--max-tasks must be a whole number"):
        Engine(engine.mt, engine.tokenizer, max_tasks=0)
    task = f"sst2={served / 'ckpt' / 'sst2'}"
    assert main(["serve", "--model", str(served / "base"), "--task", task, "--max-tasks", "0"]) == 2
    assert "--max-tasks must be from 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--task", "a=~nosuchuser-xyz/x"], "--task 'a=~nosuchuser-xyz/x':"),
        (["--tasks-dir", "~nosuchuser-xyz"], "--tasks-dir ~nosuchuser-xyz:"),
        (["--task", "a=" + "x" * 5000], "File name too long"),
        (["--task", "../a b=DIR"], "a task name is 1-64 letters"),
        (["--task", "a\n=DIR"], "a task name is 1-64 letters"),  # "$" matches before a last newline
        (["--task", "a=BASE"], "--task a: "),  # the base model's directory is not a checkpoint
        (["--task", "a=BASE", "--backend", "ray"], "is not a unipelt checkpoint"),  # before Ray starts
        (["--admin-token", "pässwörd-0123456789-abcdef"], "printable ASCII"),
    ],
)
def test_paths_names_and_tokens_the_server_cannot_use_are_one_error_line(served, capsys, flags, message):  # noqa: F811
    from unipelt.cli import main

    flags = [f.replace("BASE", str(served / "base")) for f in flags]
    task = (
        []
        if any(f.startswith(("a=", "a\n=", "../")) for f in flags)
        else ["--task", f"sst2={served / 'ckpt' / 'sst2'}"]
    )
    code = main(["serve", "--model", str(served / "base"), *task, *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("unipelt: error: ") and message in err, err
    assert "Traceback" not in err and err.count("\n") == 1


def test_metrics_count_a_client_that_left_as_499_and_a_413_under_its_route(served):  # noqa: F811
    from unipelt.serve.app import LocalService, ServeSettings, create_app

    settings = ServeSettings(max_body_bytes=100)
    app = create_app(LocalService(engine_for(served, tasks=("sst2",)), settings), settings)

    async def call(messages):
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/v1/predict", "raw_path": b"/v1/predict", "root_path": "",
            "query_string": b"", "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        }  # fmt: skip
        queue, sent = list(messages), []

        async def receive():
            return queue.pop(0) if queue else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)
        return sent

    async def go():
        async with app.router.lifespan_context(app):
            left = await call([{"type": "http.request", "body": b'{"task": ', "more_body": True}])
            big = await call([{"type": "http.request", "body": b"x" * 200, "more_body": False}])
            return left, big, (await _get_metrics(app))

    left, big, text = run(go())
    assert left == [] and big[0]["status"] == 413
    assert 'unipelt_requests_total{route="/v1/predict",status="499"} 1.0' in text
    assert 'unipelt_requests_total{route="/v1/predict",status="413"} 1.0' in text
    assert 'status="500"' not in text


async def _get_metrics(app) -> str:
    import httpx

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as c:
        return (await c.get("/metrics")).text


def test_a_json_body_sent_as_application_plus_json_is_validated_as_json(served):  # noqa: F811
    """FastAPI reads application/*+json bodies as JSON: their errors are JSON's (400, 422), not a 415."""
    kind = {"Content-Type": "application/merge-patch+json"}

    async def go():
        async with client(engine_for(served, tasks=("sst2",))) as c:
            ok = await c.post("/v1/predict", json={"task": "sst2", "inputs": ["w1"]}, headers=kind)
            missing = await c.post("/v1/predict", json={"task": "sst2"}, headers=kind)
            broken = await c.post("/v1/predict", content=b'{"task": ', headers=kind)
            text = await c.post("/v1/predict", content=b"task=sst2", headers={"Content-Type": "text/plain"})
            return ok, missing, broken, text

    ok, missing, broken, text = run(go())
    assert ok.status_code == 200
    assert missing.status_code == 422 and "inputs" in missing.json()["error"]
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]
    assert text.status_code == 415
