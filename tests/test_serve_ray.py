"""unipelt serve --backend ray: the same app and engine as a Ray Serve deployment (1 replica,
a local Ray started by the server), answering as the library does and exiting 0 on SIGTERM."""

import signal

import httpx
import pytest

pytest.importorskip("ray.serve")

from test_serve import TASKS, TOKEN, _start, alone, assert_answer, inputs_for, served, single, stderr  # noqa: E402,F401,F811


def test_ray_backend_answers_as_the_library_and_stops_on_sigterm(served):  # noqa: F811  (the fixture)
    proc, url = _start(served, "--backend", "ray", "--replicas", "1", "--max-wait-ms", "20", "--admin-token", TOKEN)
    try:
        sst2, rte = inputs_for("sst2", 5, seed=11), inputs_for("rte", 3, seed=12)
        with httpx.Client(base_url=url, timeout=60) as c:
            a = c.post("/v1/predict", json={"task": "sst2", "inputs": sst2})
            b = c.post("/v1/predict", json={"task": "rte", "inputs": rte})
            bad = c.post("/v1/predict", json={"task": "sst2", "inputs": [["w1", "w2"]]})
            tasks = c.get("/v1/tasks").json()["tasks"]
            load = c.post("/v1/tasks/x", json={"path": "spare"}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert a.status_code == b.status_code == 200, (a.text, b.text)
        for name, inputs, r in (("sst2", sst2, a), ("rte", rte, b)):
            model = single(served, name)
            for text, answer in zip(inputs, r.json()["outputs"]):
                assert_answer(answer, alone(model, text), TASKS[name][1])
        assert bad.status_code == 422 and "takes single strings" in bad.json()["error"]
        assert [t["name"] for t in tasks] == ["sst2", "rte"]
        assert load.status_code == 501 and "local backend only" in load.json()["error"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, stderr(proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # lets the server stop its Ray instance
            try:
                proc.wait(timeout=60)
            except Exception:
                proc.kill()


def test_more_cpus_than_the_local_ray_has_is_one_error_not_a_hang(served):  # noqa: F811
    """Replicas Ray cannot place wait for CPUs forever: the server never opened its port."""
    import os
    import subprocess
    import sys

    ckpt = served / "ckpt"
    cmd = [sys.executable, "-m", "unipelt", "-q", "serve", "--model", str(served / "base"), "--port", "0"]
    cmd += ["--task", f"sst2={ckpt / 'sst2'}", "--backend", "ray", "--replicas", "64", "--cpus-per-replica", "1000"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2, done.stderr
    assert last.startswith("unipelt: error: --replicas 64 x --cpus-per-replica 1000 needs 64000 CPUs"), done.stderr


def test_the_cpu_check_counts_as_ray_does():
    """Ray counts CPUs in ten-thousandths: 25 x 0.28 is 7.000000000000001 in floats, and fits 7."""
    from unipelt import UniPeltError
    from unipelt.serve.ray_backend import _check_cpus

    _check_cpus(25, 0.28, 7.0)
    _check_cpus(50, 0.14, 7.0)
    with pytest.raises(UniPeltError, match="needs 7.01 CPUs"):
        _check_cpus(1, 7.01, 7.0)
