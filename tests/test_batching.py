"""Continuous batching (ggml_rerope/batching.py): Models on the sequences of one BatchedRuntime,
driven from their own threads, give the tokens each gives alone, while their evals share steps."""

import threading

import pytest

from ggml_rerope import Model
from ggml_rerope._internals import RuntimeModel
from ggml_rerope.batching import BatchedRuntime
from ggml_rerope.errors import ContextFullError

PROMPTS = ["The capital of France is", "Once upon a time, in a land far away,", "1, 2, 3, 4,",
           "def fibonacci(n):"]
MAX_TOKENS = 12


def generate(model: Model, prompt: str) -> str:
    return "".join(model.generate(prompt, max_tokens=MAX_TOKENS, temperature=0.0))


@pytest.fixture(scope="module")
def alone(default_model_file):
    out = []
    with Model(default_model_file, n_ctx=256, n_threads=2) as m:
        for p in PROMPTS:
            m.reset()
            out.append(generate(m, p))
    return out


def test_threads_on_sequences_equal_alone_and_share_steps(default_model_file, alone):
    with RuntimeModel(default_model_file) as rm:
        with BatchedRuntime(rm, n_seq=4, n_ctx_seq=256, n_batch=16, n_threads=2) as rt:
            models = [Model(default_model_file, n_threads=2, n_batch=16, _sequence=s) for s in rt.sequences]
            got: list = [None] * 4
            start = threading.Barrier(4)

            def run(i):
                with rt.sequences[i].busy():
                    start.wait()
                    got[i] = generate(models[i], PROMPTS[i])

            threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert got == alone
            evals = sum(m.last_timings.completion_tokens for m in models)  # one eval per generated token
            assert evals >= 2 * MAX_TOKENS
            assert rt.steps < evals / 2, f"{rt.steps} steps for {evals} evals: the sequences did not share steps"
            for m in models:
                m.close()
            assert not rt.ctx.closed  # the runtime owns the context: a Model on a sequence does not free it


def test_errors_reach_the_sequence_that_asked(default_model_file):
    with RuntimeModel(default_model_file) as rm:
        with BatchedRuntime(rm, n_seq=2, n_ctx_seq=32, n_threads=2) as rt:
            m = Model(default_model_file, n_threads=2, _sequence=rt.sequences[1])
            with pytest.raises(ContextFullError, match="n_ctx = 32"):
                m.eval(list(range(40)))
            m.eval(list(range(5)))
            assert (rt.sequences[0].n_past, rt.sequences[1].n_past) == (0, 5)
            m.close()


def test_a_failing_step_fails_its_requests_and_the_runtime_goes_on(default_model_file, monkeypatch):
    with RuntimeModel(default_model_file) as rm:
        with BatchedRuntime(rm, n_seq=2, n_ctx_seq=32, n_threads=2) as rt:
            m = Model(default_model_file, n_threads=2, _sequence=rt.sequences[0])
            real = rt.ctx.decode

            def fail_once(*a, **k):
                monkeypatch.setattr(rt.ctx, "decode", real)
                raise MemoryError("planted")

            monkeypatch.setattr(rt.ctx, "decode", fail_once)
            with pytest.raises(MemoryError, match="planted"):
                m.eval([1, 2, 3])
            assert m.n_past == 0
            assert m.eval([1, 2, 3]).shape == (m.n_vocab,)
            m.close()
