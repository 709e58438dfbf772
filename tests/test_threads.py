"""Concurrent forwards: an applied model, or a ``MultiTask``, called from several threads gives
each call exactly what the same call gives alone, as the plain transformers model does.

Per-call state (the padding mask UniPELT's gates pool over, the taps that carry a sublayer's
input to its adapter, a mixed batch's task rows) lives with the call, not on modules: these tests
give every thread batches with different padding, so a mask, tap or row set read from another
thread's call changes the logits.
"""

import threading

import pytest
import torch
from conftest import batch, build, build_lm, randomize
from test_multitask import SERVED, rows, trained

import unipelt
from unipelt import MultiTask

THREADS, ROUNDS = 4, 3


def _batches(n: int) -> list[dict]:
    """Batches of different lengths and padding, so no two calls share a mask."""
    return [batch(seed=10 + i, b=3 + i % 2, t=6 + 2 * i) for i in range(n)]


def _concurrently(call, inputs: list) -> list[list]:
    """``call`` on every input from each of THREADS threads, ROUNDS times over, each thread
    starting at a different input; results[k] holds every answer the threads gave for inputs[k]."""
    results = [[] for _ in inputs]
    errors, start, lock = [], threading.Barrier(THREADS), threading.Lock()

    def work(offset: int) -> None:
        start.wait()
        try:
            for step in range(ROUNDS * len(inputs)):
                k = (offset + step) % len(inputs)
                out = call(inputs[k])
                with lock:
                    results[k].append(out)
        except Exception as e:  # noqa: BLE001 - reported by the test thread below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    assert not errors, errors
    return results


CASES = [("bert", p) for p in sorted(unipelt.PRESETS)] + [("llama", "prompt"), ("llama", "unipelt-apl")]


@pytest.mark.parametrize("arch, preset", CASES)
def test_an_applied_model_called_from_threads_answers_as_alone(arch, preset):
    """Every preset on BERT; a decoder's prompt, which runs a pass of its own per call
    (methods/prompt.py), and its per-token gates on Llama."""
    model = unipelt.apply(build(arch), preset)
    randomize(model, std=0.2)
    model.eval()
    inputs = _batches(THREADS)

    def call(b: dict) -> torch.Tensor:
        with torch.no_grad():
            return model(**b).logits

    alone = [call(b) for b in inputs]
    for k, answers in enumerate(_concurrently(call, inputs)):
        wrong = sum(not torch.equal(a, alone[k]) for a in answers)
        assert wrong == 0, f"{preset}: {wrong} of {len(answers)} answers for batch {k} differ from a lone call"


def test_multitask_called_from_threads_answers_as_alone(tmp_path):
    presets = ["unipelt-apl", "prompt", "adapter-houlsby", "mh-parallel-adapter", "lora"]
    assert set(presets) <= set(SERVED)
    mt = MultiTask(build("bert"))
    for i, p in enumerate(presets):
        trained(tmp_path, "bert", p, labels=2 + i % 2, seed=i)
        mt.add(p, tmp_path / p)
    inputs = []
    for i in range(THREADS):  # each call its own mix of tasks, lengths and padding
        b = rows(3 + i, seed=20 + i, longest=6 + 3 * i)
        inputs.append((b, [presets[(i + j) % len(presets)] for j in range(3 + i)]))

    def call(item) -> list[torch.Tensor]:
        b, tasks = item
        return mt(**b, tasks=tasks)

    alone = [call(item) for item in inputs]
    for k, answers in enumerate(_concurrently(call, inputs)):
        wrong = sum(not all(torch.equal(x, y) for x, y in zip(a, alone[k])) for a in answers)
        assert wrong == 0, f"{wrong} of {len(answers)} mixed batches {k} differ from a lone call"


def test_a_decoder_prompt_step_keeps_its_gradient_beside_a_no_grad_call():
    """A decoder's prompt is served as keys and values computed once per call: a no-grad call on
    another thread (a server beside training) while a training step is inside its layers must
    not hand the step its own table, which carries no gradient. The threads interleave by events."""
    model = unipelt.apply(build_lm("llama"), "prompt").train()
    inputs = batch()

    def step() -> torch.Tensor:
        model.zero_grad()
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        return model.pelt_prompt.embeddings.grad.clone()

    alone = step()
    inside, served = threading.Event(), threading.Event()
    calls = []

    def pause(module, args, kwargs):
        if threading.current_thread().name == "train":
            calls.append(1)
            if len(calls) == 2:  # the real tokens' pass (the first is the prompt's own)
                inside.set()
                served.wait(10)

    def serve():
        inside.wait(10)
        with torch.no_grad():
            model(**inputs)
        served.set()

    hook = model.model.layers[0].register_forward_pre_hook(pause, with_kwargs=True)
    result = {}
    threads = [threading.Thread(target=lambda: result.update(g=step()), name="train"), threading.Thread(target=serve)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        hook.remove()
    torch.testing.assert_close(result["g"], alone)
