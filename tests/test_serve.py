"""unipelt serve: the HTTP API in process (FastAPI app + batcher on a tiny model), and the real
server as a subprocess for graceful shutdown. Every answer is checked against the library."""

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch
from conftest import build, randomize
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

import unipelt
from unipelt import MultiTask

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from unipelt.serve import Engine, Row, ServeError, TaskSpec  # noqa: E402
from unipelt.serve.app import ADMIN_OFF, LocalService, ServeSettings, create_app  # noqa: E402
from unipelt.serve.batcher import Batcher  # noqa: E402

TOKEN = "a-test-token-of-32-characters-00"
# name: (preset, labels (None: regression), pairs)
TASKS = {
    "sst2": ("unipelt-apl", ["negative", "positive"], False),
    "rte": ("lora", ["entailment", "not_entailment"], True),
    "stsb": ("bitfit", None, True),
    "cola": ("prompt", ["unacceptable", "acceptable"], False),
}


def tokenizer():
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(40)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # segment ids 1 on the second sentence, as BERT's tokenizer makes them: a server that drops them fails
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        model_max_length=64,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def task_model(labels):
    if labels is None:
        return build(num_labels=1, problem_type="regression")
    return build(
        num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)}
    )


def save_task(directory: Path, preset: str, labels, seed: int, **recorded) -> None:
    model = unipelt.apply(task_model(labels), preset)
    randomize(model, std=0.1, seed=seed)
    unipelt.save(model, directory, **recorded)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Path:
    """base/ (a tiny BERT and its tokenizer, as save_pretrained writes them) and ckpt/<task>/."""
    root = tmp_path_factory.mktemp("served")
    build().save_pretrained(root / "base")
    tokenizer().save_pretrained(root / "base")
    for i, (name, (preset, labels, pairs)) in enumerate(TASKS.items()):
        save_task(root / "ckpt" / name, preset, labels, seed=i, pairs=pairs)
    save_task(root / "ckpt" / "spare", "adapter", ["no", "yes"], seed=9)
    return root


def engine_for(served: Path, tasks=tuple(TASKS), **kw) -> Engine:
    engine = Engine.from_directory(served / "base", **kw)
    for name in tasks:
        engine.add(name, TaskSpec(path=served / "ckpt" / name, pairs=TASKS[name][2]))
    return engine


@contextlib.asynccontextmanager
async def client(engine: Engine, **settings):
    s = ServeSettings(**{"tasks_dir": engine_dir(engine), **settings})
    app = create_app(LocalService(engine, s), s)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as c:
            yield c


def engine_dir(engine: Engine) -> Path | None:
    paths = {Path(i.path).parent for i in engine.info.values()}
    return paths.pop() if len(paths) == 1 else None


def run(coroutine):
    return asyncio.run(coroutine)


# ---- what the answers must equal
def single(served: Path, name: str):
    """The task's own model alone, loaded the ordinary way (no MultiTask)."""
    return unipelt.load(task_model(TASKS[name][1]), served / "ckpt" / name)


def alone(model, text, max_length=64) -> torch.Tensor:
    """The model on one row as training fed it: the tokenizer's full encoding (segment ids too)."""
    tok = tokenizer()
    enc = tok(
        *(text if isinstance(text, (list, tuple)) else (text,)),
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    assert "token_type_ids" in enc
    with torch.no_grad():
        return model(**enc).logits[0]


def assert_answer(answer: dict, logits: torch.Tensor, labels) -> None:
    if labels is None:
        assert abs(answer["value"] - float(logits[0])) < 1e-5
        return
    p = logits.softmax(-1)
    assert answer["label"] == labels[int(p.argmax())]
    assert list(answer["scores"]) == labels
    assert max(abs(answer["scores"][l] - float(v)) for l, v in zip(labels, p)) < 1e-5


def inputs_for(name: str, n: int, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)

    def sentence():
        length = int(torch.randint(1, 9, (1,), generator=g))
        return " ".join(f"w{int(i)}" for i in torch.randint(0, 40, (length,), generator=g))

    return [[sentence(), sentence()] if TASKS[name][2] else sentence() for _ in range(n)]


# ---- answers
def test_answers_equal_the_single_task_models_and_the_library(served):
    engine = engine_for(served)
    library = MultiTask(build())
    for name in TASKS:
        library.add(name, served / "ckpt" / name)

    async def body():
        async with client(engine) as c:
            for seed, name in enumerate(TASKS):
                inputs = inputs_for(name, 5, seed)
                r = await c.post("/v1/predict", json={"task": name, "inputs": inputs})
                assert r.status_code == 200, r.text
                out = r.json()
                assert out["task"] == name and len(out["outputs"]) == len(inputs)
                model = single(served, name)
                texts = [tuple(t) if isinstance(t, list) else t for t in inputs]
                lib = library.predict(texts, [name] * len(texts), tokenizer())
                for text, answer, ref in zip(inputs, out["outputs"], lib):
                    assert_answer(answer, alone(model, text), TASKS[name][1])
                    assert {k: v for k, v in ref.items() if k != "task"}.keys() == answer.keys()

    run(body())


def test_tasks_health_and_metrics(served):
    async def body():
        async with client(engine_for(served)) as c:
            tasks = {t["name"]: t for t in (await c.get("/v1/tasks")).json()["tasks"]}
            assert list(tasks) == list(TASKS)
            assert tasks["sst2"]["preset"] == "unipelt-apl" and tasks["sst2"]["labels"] == ["negative", "positive"]
            assert tasks["stsb"]["labels"] is None and tasks["stsb"]["regression"] and tasks["rte"]["pairs"]
            counts = unipelt.count_parameters(single(served, "rte"))
            assert tasks["rte"]["parameters"] == counts["inference"] + counts["head"]
            assert tasks["cola"]["max_length"] == 64 - 10  # the prompt's 10 tokens need positions too
            assert (await c.get("/health")).json() == {"status": "ok", "tasks": 4}
            await c.post("/v1/predict", json={"task": "sst2", "inputs": ["w1", "w2", "w3"]})
            await c.post("/v1/predict", json={"task": "nope", "inputs": ["w1"]})
            text = (await c.get("/metrics")).text
            assert re.search(r'unipelt_requests_total\{route="/v1/predict",status="200"\} 1\.0', text)
            assert re.search(r'unipelt_requests_total\{route="/v1/predict",status="404"\} 1\.0', text)
            assert re.search(r'unipelt_rows_total\{task="sst2"\} 3\.0', text)
            assert re.search(r"unipelt_batch_rows_sum 3\.0", text)
            assert "unipelt_request_seconds_bucket" in text

    run(body())


def test_a_task_is_served_as_its_checkpoint_says_it_was_trained(served, tmp_path):
    """`unipelt train --save` records whether inputs are pairs and the length they were cut to:
    /v1/tasks says so, and a longer input is cut there, as MultiTask.predict cuts it."""
    save_task(tmp_path / "mrpc", "lora", ["no", "yes"], seed=3, pairs=True, max_length=7)
    engine = engine_for(served, tasks=())
    info = engine.add("mrpc", TaskSpec(path=tmp_path / "mrpc"))
    assert info.pairs is True and info.max_length == 7
    [answer] = engine.run([Row("mrpc", (LONG, "w1"))])
    assert answer["truncated"] is True
    library = MultiTask(build())
    library.add("mrpc", tmp_path / "mrpc")
    [ref] = library.predict([(LONG, "w1")], "mrpc", tokenizer())
    assert abs(answer["scores"]["yes"] - ref["scores"]["yes"]) < 1e-5
    model = unipelt.load(task_model(["no", "yes"]), tmp_path / "mrpc")
    assert_answer(answer, alone(model, (LONG, "w1"), max_length=7), ["no", "yes"])


# ---- batching
def test_batcher_gathers_requests_and_returns_each_its_own_rows():
    batches = []

    def echo(rows):
        batches.append([r.text for r in rows])
        return [{"echo": (r.task, r.text)} for r in rows]

    async def body():
        b = Batcher(echo, max_batch=8, max_wait_s=0.05, max_queued=1000)
        b.start()
        requests = [[Row(f"t{i % 3}", f"r{i}-{j}") for j in range(1 + i % 5)] for i in range(20)]
        requests.append([Row("big", f"big-{j}") for j in range(19)])  # more rows than one batch
        answers = await asyncio.gather(*(b.submit(rows) for rows in requests))
        await b.close()
        return requests, answers

    requests, answers = run(body())
    for rows, got in zip(requests, answers):
        assert got == [{"echo": (r.task, r.text)} for r in rows]
    assert all(len(x) <= 8 for x in batches)
    assert sum(len(x) for x in batches) == sum(len(r) for r in requests)
    assert max(len(x) for x in batches) == 8  # rows of several requests shared a batch


def test_concurrent_mixed_requests_each_get_their_rows(served):
    engine = engine_for(served)
    names = list(TASKS)
    requests = [(names[i % 4], inputs_for(names[i % 4], 1 + i % 4, seed=100 + i)) for i in range(24)]
    models = {n: single(served, n) for n in names}

    async def body():
        async with client(engine, max_batch=16, max_wait_ms=20) as c:
            responses = await asyncio.gather(
                *(c.post("/v1/predict", json={"task": t, "inputs": x}) for t, x in requests)
            )
            return responses, (await c.get("/metrics")).text

    responses, metrics = run(body())
    for (name, inputs), r in zip(requests, responses):
        assert r.status_code == 200 and r.json()["task"] == name
        for text, answer in zip(inputs, r.json()["outputs"]):
            assert_answer(answer, alone(models[name], text), TASKS[name][1])
    batches = float(re.search(r"unipelt_batch_rows_count (\S+)", metrics).group(1))
    assert batches < len(requests)  # mixed batches: fewer forwards than requests


def test_a_failing_batch_fails_its_requests_and_the_batcher_keeps_serving():
    calls = []

    def flaky(rows):
        calls.append(len(rows))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return [{"ok": r.text} for r in rows]

    async def body():
        b = Batcher(flaky, max_batch=4, max_wait_s=0, max_queued=100)
        b.start()
        with pytest.raises(ServeError, match="internal error: RuntimeError: boom") as e:
            await b.submit([Row("t", "a")])
        assert e.value.status == 500
        assert await b.submit([Row("t", "b")]) == [{"ok": "b"}]
        await b.close()
        with pytest.raises(ServeError, match="shutting down"):
            await b.submit([Row("t", "c")])

    run(body())


# ---- bad input: a 4xx JSON error each, and the server keeps answering
LONG = " ".join(f"w{i % 40}" for i in range(200))
BAD = [
    ("unknown task", {"task": "mnli", "inputs": ["w1"]}, 404, "unknown task 'mnli'; loaded: sst2, rte, stsb, cola"),
    ("empty inputs", {"task": "sst2", "inputs": []}, 422, "inputs: List should have at least 1 item"),
    ("missing inputs", {"task": "sst2"}, 422, "inputs: Field required"),
    ("missing task", {"inputs": ["w1"]}, 422, "task: Field required"),
    (
        "a pair for a single-sentence task",
        {"task": "sst2", "inputs": ["w1", ["w2", "w3"]]},
        422,
        "inputs[1]: task 'sst2' takes single strings, not pairs",
    ),
    (
        "a single sentence for a pair task",
        {"task": "rte", "inputs": ["w1"]},
        422,
        "inputs[0]: task 'rte' takes sentence pairs",
    ),
    ("a non-string item", {"task": "sst2", "inputs": ["w1", 7]}, 422, "inputs[1] must be a string or a pair"),
    ("a pair of three", {"task": "rte", "inputs": [["w1", "w2", "w3"]]}, 422, "inputs[0] must be a string or a pair"),
    ("a pair with a number", {"task": "rte", "inputs": [["w1", 2]]}, 422, "inputs[0] must be a string or a pair"),
    ("inputs not a list", {"task": "sst2", "inputs": "w1"}, 422, "inputs: Input should be a valid list"),
    ("task not a string", {"task": 3, "inputs": ["w1"]}, 422, "task: Input should be a valid string"),
    ("an unknown field", {"task": "sst2", "inputs": ["w1"], "input": "w1"}, 422, "input: Extra inputs"),
    ("too many inputs", {"task": "sst2", "inputs": ["w1"] * 9}, 413, "9 inputs in one request; at most 8"),
    ("a body over the limit", {"task": "sst2", "inputs": [LONG * 3]}, 413, "the body is over 2048 bytes"),
    ("malformed JSON", b'{"task": "sst2", "inputs": [', 400, "the body is not valid JSON"),
    (
        "JSON without its content type",
        ("POST", "/v1/predict", b'{"task": "sst2", "inputs": ["w1"]}'),
        415,
        "Content-Type: application/json",
    ),
    ("a JSON list", [1, 2], 422, "Input should be a valid dictionary"),
    ("no route", ("GET", "/v2/predict"), 404, "Not Found"),
    ("wrong method", ("GET", "/v1/predict"), 405, "Method Not Allowed"),
]


@pytest.mark.parametrize("case, body, status, message", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_a_clear_4xx_and_the_server_stays_up(served, case, body, status, message):
    async def go():
        async with client(engine_for(served), max_inputs=8, max_body_bytes=2048) as c:
            if isinstance(body, tuple):
                r = await c.request(*body[:2], content=body[2] if len(body) > 2 else None)
            elif isinstance(body, bytes):
                r = await c.post("/v1/predict", content=body, headers={"content-type": "application/json"})
            else:
                r = await c.post("/v1/predict", json=body)
            assert r.status_code == status, r.text
            assert r.headers["content-type"] == "application/json"
            assert message in r.json()["error"], r.json()
            ok = await c.post("/v1/predict", json={"task": "sst2", "inputs": ["w1 w2"]})
            assert ok.status_code == 200 and ok.json()["outputs"][0]["label"] in ("negative", "positive")

    run(go())


def test_a_chunked_body_over_the_limit_is_refused(served):
    async def go():
        async with client(engine_for(served), max_body_bytes=2048) as c:

            async def chunks():
                yield b'{"task": "sst2", "inputs": ["'
                for _ in range(10):
                    yield b"w1 " * 100
                yield b'"]}'

            r = await c.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
            assert r.status_code == 413 and "over 2048 bytes" in r.json()["error"]

    run(go())


def test_long_inputs_are_truncated_as_the_library_does_and_say_so(served):
    engine = engine_for(served, max_length=32)
    library = MultiTask(build())
    library.add("rte", served / "ckpt" / "rte")

    async def go():
        async with client(engine) as c:
            r = await c.post("/v1/predict", json={"task": "rte", "inputs": [[LONG, "w1"], ["w1", "w2"]]})
            cola = await c.post("/v1/predict", json={"task": "cola", "inputs": [LONG, "w3"]})
            return r.json()["outputs"], cola.json()["outputs"]

    rte, cola = run(go())
    assert rte[0]["truncated"] is True and "truncated" not in rte[1]
    ref = library.predict([(LONG, "w1")], ["rte"], tokenizer(), max_length=32)[0]
    assert rte[0]["label"] == ref["label"] and abs(rte[0]["scores"]["entailment"] - ref["scores"]["entailment"]) < 1e-5
    assert_answer(rte[0], alone(single(served, "rte"), (LONG, "w1"), max_length=32), TASKS["rte"][1])
    assert cola[0]["truncated"] is True and "truncated" not in cola[1]
    assert_answer(cola[0], alone(single(served, "cola"), LONG, max_length=32), TASKS["cola"][1])
    with pytest.raises(unipelt.UniPeltError, match="between 1 and the model's limit 64"):
        engine_for(served, max_length=65)


# ---- loading and unloading while serving
def auth(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def test_hot_load_and_unload(served):
    engine = engine_for(served, tasks=("sst2",))
    spare = unipelt.load(task_model(["no", "yes"]), served / "ckpt" / "spare")

    async def go():
        async with client(engine, admin_token=TOKEN) as c:
            r = await c.post("/v1/tasks/qa", json={"path": "spare"}, headers=auth())
            assert r.status_code == 201, r.text
            assert r.json()["name"] == "qa" and r.json()["preset"] == "adapter" and r.json()["labels"] == ["no", "yes"]
            inputs = inputs_for("sst2", 4, seed=7)
            mixed = await asyncio.gather(
                c.post("/v1/predict", json={"task": "qa", "inputs": inputs}),
                c.post("/v1/predict", json={"task": "sst2", "inputs": inputs}),
            )
            for text, answer in zip(inputs, mixed[0].json()["outputs"]):
                assert_answer(answer, alone(spare, text), ["no", "yes"])
            for text, answer in zip(inputs, mixed[1].json()["outputs"]):
                assert_answer(answer, alone(single(served, "sst2"), text), TASKS["sst2"][1])
            assert [t["name"] for t in (await c.get("/v1/tasks")).json()["tasks"]] == ["sst2", "qa"]
            assert (await c.post("/v1/tasks/qa", json={"path": "spare"}, headers=auth())).status_code == 409
            r = await c.delete("/v1/tasks/qa", headers=auth())
            assert r.status_code == 200 and r.json() == {"removed": "qa"}
            r = await c.post("/v1/predict", json={"task": "qa", "inputs": ["w1"]})
            assert r.status_code == 404 and "unknown task 'qa'" in r.json()["error"]
            assert (await c.delete("/v1/tasks/qa", headers=auth())).status_code == 404
            r = await c.post("/v1/tasks/rte", json={"path": "rte", "pairs": True}, headers=auth())
            assert r.status_code == 201 and r.json()["pairs"] is True
            r = await c.post("/v1/predict", json={"task": "rte", "inputs": [["w1", "w2"]]})
            assert r.status_code == 200

    run(go())


def test_batches_run_while_a_checkpoint_is_read(served, monkeypatch):
    """A hot load reads and builds its task outside the engine's lock (MultiTask.prepare): a
    batch sent while the checkpoint is being read is answered before the load ends."""
    import unipelt.multitask as multitask

    engine = engine_for(served, tasks=("sst2",))
    before = engine.run([Row("sst2", "w1 w2")])
    reading, release = threading.Event(), threading.Event()
    real_load = multitask.load

    def slow_load(*args, **kwargs):
        reading.set()
        assert release.wait(30), "the test never released the load"
        return real_load(*args, **kwargs)

    monkeypatch.setattr(multitask, "load", slow_load)
    loader = threading.Thread(target=engine.add, args=("qa", TaskSpec(path=served / "ckpt" / "spare")))
    loader.start()
    try:
        assert reading.wait(30)
        answered = []
        batch = threading.Thread(target=lambda: answered.append(engine.run([Row("sst2", "w1 w2")])))
        batch.start()
        batch.join(30)  # under the old code it waited for the lock until the load ended
        assert answered == [before] and "qa" not in engine.info
    finally:
        release.set()
        loader.join(30)
    assert "qa" in engine.info
    [answer] = engine.run([Row("qa", "w1 w2")])
    spare = unipelt.load(task_model(["no", "yes"]), served / "ckpt" / "spare")
    assert_answer(answer, alone(spare, "w1 w2"), ["no", "yes"])


def test_batches_run_while_more_loads_wait_than_the_event_loop_has_threads(served, monkeypatch):
    """Loads wait their turn on a thread each (Engine.loading); in the loop's shared pool (6 threads
    on 2 cores) ten of them left no thread to a batch until they ended."""
    import unipelt.multitask as multitask

    engine = engine_for(served, tasks=("sst2",))
    before = engine.run([Row("sst2", "w1 w2")])
    release, real_load = threading.Event(), multitask.load

    def slow_load(*args, **kwargs):
        assert release.wait(60), "the test never released the loads"
        return real_load(*args, **kwargs)

    monkeypatch.setattr(multitask, "load", slow_load)

    async def go():
        async with client(engine, admin_token=TOKEN) as c:
            loads = [
                asyncio.ensure_future(c.post(f"/v1/tasks/qa{i}", json={"path": "spare"}, headers=auth()))
                for i in range(12)
            ]
            await asyncio.sleep(0.5)  # every load is on its thread by now
            try:
                r = await asyncio.wait_for(c.post("/v1/predict", json={"task": "sst2", "inputs": ["w1 w2"]}), 20)
                assert r.status_code == 200 and r.json()["outputs"] == before
            finally:
                release.set()
            assert [r.status_code for r in await asyncio.gather(*loads)].count(201) == 12

    run(go())


def test_checkpoints_are_read_one_at_a_time(served, monkeypatch):
    """Each load may build up to the added-parameter cap before it is folded: concurrent hot
    loads wait for each other (batches do not), so N requests cannot hold N times that."""
    import unipelt.multitask as multitask

    engine = engine_for(served, tasks=("sst2",))
    inside, most, guard = [0], [0], threading.Lock()
    first_in, release = threading.Event(), threading.Event()
    real_load = multitask.load

    def counting_load(*args, **kwargs):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        first_in.set()
        assert release.wait(30), "the test never released the load"
        try:
            return real_load(*args, **kwargs)
        finally:
            with guard:
                inside[0] -= 1

    monkeypatch.setattr(multitask, "load", counting_load)
    spare = TaskSpec(path=served / "ckpt" / "spare")
    loaders = [threading.Thread(target=engine.add, args=(name, spare)) for name in ("qa", "qb")]
    for t in loaders:
        t.start()
    try:
        assert first_in.wait(30)
        for t in loaders:  # the second is queued behind the first, not reading beside it
            t.join(0.5)
        assert most[0] == 1
        assert engine.run([Row("sst2", "w1 w2")])  # batches still run meanwhile
    finally:
        release.set()
        for t in loaders:
            t.join(30)
    assert most[0] == 1 and {"qa", "qb"} <= set(engine.info)


def test_a_checkpoint_that_fails_to_load_leaves_the_running_tasks_untouched(served, tmp_path):
    root = tmp_path / "tasks"
    shutil.copytree(served / "ckpt", root)
    (root / "broken").mkdir()
    shutil.copy(root / "spare" / "unipelt.json", root / "broken" / "unipelt.json")
    (root / "broken" / "unipelt.safetensors").write_bytes(b"not safetensors")
    (root / "pickle").mkdir()
    (root / "pickle" / "pytorch_model.bin").write_bytes(b"\x80\x04 a pickle is never read")
    other = unipelt.apply(build(seed=5, num_labels=2), "lora")  # trained on another base model
    unipelt.save(other, root / "other-base")
    engine = engine_for(served, tasks=("sst2", "rte"))
    inputs = inputs_for("sst2", 3, seed=1)

    where = f"the server's tasks directory {root.resolve()}"

    async def go():
        async with client(engine, admin_token=TOKEN, tasks_dir=root) as c:
            before = (await c.post("/v1/predict", json={"task": "sst2", "inputs": inputs})).json()
            cases = {
                "broken": "does not match the checksum",
                "pickle": "is not a unipelt checkpoint",
                "other-base": "another base model",
            }
            for path, message in cases.items():
                r = await c.post(f"/v1/tasks/{path}", json={"path": path}, headers=auth())
                assert r.status_code == 422 and message in r.json()["error"], r.text
            for path, status, message in (
                ("../ckpt", 400, "outside"),
                ("/etc", 400, f"outside the server's tasks directory {root.resolve()}"),
                (str(root / "spare"), 400, f"is absolute; give it relative to {where}: 'spare'"),
                ("missing", 404, "no checkpoint directory"),
            ):
                r = await c.post("/v1/tasks/x", json={"path": path}, headers=auth())
                assert r.status_code == status and message in r.json()["error"], r.text
            r = await c.post("/v1/tasks/bad name!", json={"path": "spare"}, headers=auth())
            assert r.status_code == 422
            assert [t["name"] for t in (await c.get("/v1/tasks")).json()["tasks"]] == ["sst2", "rte"]
            after = (await c.post("/v1/predict", json={"task": "sst2", "inputs": inputs})).json()
            assert after == before

    run(go())


def test_admin_endpoints_need_the_token(served):
    async def go():
        async with client(engine_for(served, tasks=("sst2",))) as c:  # started without a token: off
            for r in (
                await c.post("/v1/tasks/qa", json={"path": "spare"}),
                await c.delete("/v1/tasks/sst2"),
                await c.post("/v1/tasks/qa", json={"path": "spare"}, headers=auth()),
            ):
                assert r.status_code == 404 and r.json()["error"] == ADMIN_OFF
        async with client(engine_for(served, tasks=("sst2",)), admin_token=TOKEN) as c:
            r = await c.delete("/v1/tasks/sst2")
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            r = await c.delete("/v1/tasks/sst2", headers={"Authorization": TOKEN})
            assert r.status_code == 401
            r = await c.delete("/v1/tasks/sst2", headers=auth(TOKEN[:-1] + "x"))
            assert r.status_code == 403 and r.json()["error"] == "wrong admin token"
            assert [t["name"] for t in (await c.get("/v1/tasks")).json()["tasks"]] == ["sst2"]
            assert (await c.delete("/v1/tasks/sst2", headers=auth())).status_code == 200

    run(go())
    with pytest.raises(ValueError, match="at least 16 characters"):
        ServeSettings(admin_token="short")


# ---- the command and the real server
def test_serve_command_refuses_bad_flags_before_loading(served, capsys):
    from unipelt.cli import main

    base, ckpt = str(served / "base"), served / "ckpt"
    assert main(["serve", "--model", base, "--task", "sst2"]) == 2
    assert "expected NAME=DIR or NAME=DIR:pairs" in capsys.readouterr().err
    assert main(["serve", "--model", base, "--task", f"sst2={ckpt / 'nope'}"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["serve", "--model", base, "--task", f"sst2={ckpt / 'sst2'}", "--host", "0.0.0.0"]) == 2
    assert "loopback addresses only" in capsys.readouterr().err
    assert main(["serve", "--model", base, "--task", f"a={ckpt / 'sst2'}", "--task", f"a={ckpt / 'rte'}"]) == 2
    assert "same task name" in capsys.readouterr().err


@pytest.mark.parametrize(
    "broken, message",
    [
        (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 7), "SafetensorError"),
        (lambda d: _edit_config(d, model_type="zzz"), "does not support model_type 'zzz'"),
        (lambda d: (d / "config.json").unlink(), "has no config.json"),
        (lambda d: _edit_config(d, hidden_size="abc"), "hidden_size"),
        (lambda d: _edit_config(d, max_position_embeddings=-5), "RuntimeError"),
    ],
    ids=["cut-weights", "unknown-type", "no-config", "mistyped-config", "negative-size"],
)
def test_a_broken_model_directory_is_one_error_line(served, tmp_path, capsys, broken, message):
    from unipelt.cli import main

    base = tmp_path / "base"
    shutil.copytree(served / "base", base)
    broken(base)
    assert main(["serve", "--model", str(base), "--task", f"sst2={served / 'ckpt' / 'sst2'}", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"unipelt: error: --model {base}") and err.count("\n") == 1, err
    assert message in err


def _edit_config(directory: Path, **fields) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def _start(served: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    ckpt = served / "ckpt"
    cmd = [
        sys.executable,
        "-m",
        "unipelt",
        "-q",
        "serve",
        "--model",
        str(served / "base"),
        "--port",
        "0",
        "--task",
        f"sst2={ckpt / 'sst2'}",
        "--task",
        f"rte={ckpt / 'rte'}:pairs",
        *flags,
    ]
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty server never blocks on a full pipe
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    proc.log = log
    line = _read_line(proc, timeout=180)
    match = re.search(r"listening on (http://\S+)", line or "")
    if not match:
        proc.kill()
        raise AssertionError(f"the server did not start: {line!r} {stderr(proc)}")
    return proc, match.group(1)


def stderr(proc: subprocess.Popen) -> str:
    proc.log.seek(0)
    return proc.log.read()[-3000:]


def _read_line(proc: subprocess.Popen, timeout: float) -> str | None:
    """The first stdout line of ``proc``, or None after ``timeout`` s (the thread leaves with the pipe)."""
    lines = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return lines[0] if lines else None


def _in_flight(url: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return int(float(re.search(r"^unipelt_requests_in_flight (\S+)", text, re.M).group(1))) - 1  # not this one


def test_sigterm_finishes_queued_requests_and_exits_0(served):
    # batches wait up to 1.5 s to fill, so the requests are still queued when SIGTERM comes
    proc, url = _start(served, "--max-wait-ms", "1500", "--max-body-kb", "16")
    inputs = inputs_for("sst2", 6, seed=3)
    results = [None] * 6
    try:
        # over the limit, on a real socket: the client gets its 413, not a reset connection
        big = b'{"task": "sst2", "inputs": ["' + b"w1 " * 30000 + b'"]}'
        r = httpx.post(f"{url}/v1/predict", content=big, headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 413 and "over 16384 bytes" in r.json()["error"]

        def send(i):
            results[i] = httpx.post(f"{url}/v1/predict", json={"task": "sst2", "inputs": [inputs[i]]}, timeout=60)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for _ in range(600):  # bounded: at most 60 s
            if _in_flight(url) >= 6:
                break
            threading.Event().wait(0.1)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert proc.wait(timeout=60) == 0, stderr(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    model = single(served, "sst2")
    for text, r in zip(inputs, results):
        assert r is not None and r.status_code == 200
        assert_answer(r.json()["outputs"][0], alone(model, text), TASKS["sst2"][1])
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=5)


def test_a_task_removed_between_check_and_admission_is_a_404(served, monkeypatch):
    """DELETE runs on a worker thread: between a request's check and its admission (the event
    loop) the task could go, and the admission's KeyError became a plain-text 500."""
    engine = engine_for(served, tasks=("sst2", "rte"))
    checked = engine.check("rte", [("w1 w2", "w3")])
    engine.remove("rte")
    with pytest.raises(ServeError) as refused:
        engine.rows("rte", [("w1 w2", "w3")], checked)
    assert refused.value.status == 404 and "was unloaded" in str(refused.value)


def test_the_batch_token_budget_counts_a_tasks_prompt(served):
    """Rows of 3 tokens of a task with a 10-token prompt ran 10 at a time under a budget of 32:
    130 positions per forward, 4 times the budget."""
    from unipelt.serve import Row

    engine = engine_for(served, max_batch_tokens=32)
    shapes = []
    hook = engine.mt.model.register_forward_pre_hook(
        lambda m, args, kwargs: shapes.append(tuple(kwargs["attention_mask"].shape)), with_kwargs=True
    )
    try:
        engine.run([Row("cola", f"w{i}") for i in range(30)])
    finally:
        hook.remove()
    assert shapes and max(b * t for b, t in shapes) <= 32


def test_a_pair_with_an_empty_second_side_is_encoded_as_training_encodes_it(served):
    """Training tokenizes a frame in one batch call, which encodes ("w1 w2", "") as a pair with an
    empty second segment; a call on the one text reads the empty side as no pair. The server's
    one-row paths and ``MultiTask.predict`` made it a single sentence, so the answer depended on
    the rows it was batched with."""
    model, tok = single(served, "rte"), tokenizer()
    library = MultiTask(build())
    library.add("rte", served / "ckpt" / "rte")
    engine = engine_for(served, tasks=("rte",))
    long = " ".join(f"w{i % 40}" for i in range(100))  # over the task's 64 tokens: the truncating path
    for text in (("w1 w2", ""), (long, "")):
        enc = tok([text[0]], [text[1]], truncation=True, max_length=64, return_tensors="pt")
        assert enc["input_ids"][0, -2:].tolist() == [3, 3]  # the pair's two [SEP]s: an empty segment
        with torch.no_grad():
            trained = model(**enc).logits[0]
        alone_row = engine.run([Row("rte", text)])[0]
        batched = engine.run([Row("rte", ("w3", "w4 w5")), Row("rte", text)])[1]
        for answer in (alone_row, batched, library.predict([text], ["rte"], tok)[0]):
            assert_answer({k: v for k, v in answer.items() if k != "task"}, trained, TASKS["rte"][1])


def test_a_request_whose_client_left_is_not_run_and_counts_as_499(served, monkeypatch):
    """A client that disconnects while its rows wait behind a running batch: its rows were run
    anyway and the request counted as a 200."""
    engine, ran, release = engine_for(served, tasks=("sst2",)), [], threading.Event()
    run_batch = engine.run

    def slow(rows):
        ran.extend(r.text for r in rows)
        release.wait(30)  # the first batch holds the worker while the second request queues
        return run_batch(rows)

    monkeypatch.setattr(engine, "run", slow)
    settings = ServeSettings(tasks_dir=engine_dir(engine))
    service = LocalService(engine, settings)
    app = create_app(service, settings)

    async def leaving_request(body: bytes, gone: asyncio.Event, sent: list) -> None:
        messages = iter([{"type": "http.request", "body": body, "more_body": False}])

        async def receive():
            message = next(messages, None)
            if message is None:
                await gone.wait()
                return {"type": "http.disconnect"}
            return message

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/v1/predict", "raw_path": b"/v1/predict", "query_string": b"",
            "root_path": "", "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        }  # fmt: skip
        await app(scope, receive, send)

    async def body():
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as c:
                first = asyncio.ensure_future(c.post("/v1/predict", json={"task": "sst2", "inputs": ["w1"]}))
                while not ran:
                    await asyncio.sleep(0.01)
                gone, sent = asyncio.Event(), []
                payload = json.dumps({"task": "sst2", "inputs": ["w38 w39"]}).encode()
                second = asyncio.ensure_future(leaving_request(payload, gone, sent))
                while service.batcher.queue.qsize() == 0:
                    await asyncio.sleep(0.01)
                gone.set()
                await asyncio.wait_for(second, 10)  # returns without waiting for the batch
                release.set()
                assert (await first).status_code == 200
                assert (await c.post("/v1/predict", json={"task": "sst2", "inputs": ["w2"]})).status_code == 200
                assert sent == []  # nothing was answered to a client that is gone
                return (await c.get("/metrics")).text

    metrics = run(body())
    assert ran == ["w1", "w2"]  # the second request's row was never run
    assert re.search(r'unipelt_requests_total\{route="/v1/predict",status="499"\} 1\.0', metrics)
    assert re.search(r'unipelt_requests_total\{route="/v1/predict",status="200"\} 2\.0', metrics)
