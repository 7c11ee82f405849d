"""Several sequences in one context (ggml_rerope_decode): each sequence owns n_ctx / n_seq_max cache
rows, one graph takes tokens of many sequences, each attends only to its own rows under its own
scheme. Checked: greedy tokens generated together equal those generated alone (CPU, the
graph-pieces path that the GPU runs, and the GPU itself); a sequence's logits do not depend on what
the others hold; per-sequence truncate / kv_remove / scheme; the errors and their rollback."""

import numpy as np
import pytest

from ggml_rerope._internals import KV_TYPES, RuntimeContext, RuntimeModel
from ggml_rerope.errors import ContextFullError, InvalidArgumentError

STEPS = 5


def greedy_alone(model: RuntimeModel, prompt: np.ndarray, steps: int, n_ctx: int, scheme=None, n_batch=512, **types):
    with RuntimeContext(model, n_ctx=n_ctx, n_batch=n_batch, n_threads=2, **types) as ctx:
        if scheme:
            ctx.set_scheme_fields(**scheme)
        logits = ctx.decode(prompt, np.zeros(prompt.size))
        out = []
        for _ in range(steps):
            out.append(int(np.argmax(logits[-1])))
            logits = ctx.decode(np.array(out[-1:]), np.zeros(1))
        return out


def prefill_together(ctx: RuntimeContext, prompts: list[np.ndarray], rng) -> list[np.ndarray]:
    """All prompts in one batch, their tokens interleaved at random (each sequence's order kept);
    returns each sequence's logits after its prompt."""
    slots = rng.permutation(np.repeat(np.arange(len(prompts)), [p.size for p in prompts]))
    next_of = [0] * len(prompts)
    toks, ids = [], []
    for s in slots:
        toks.append(prompts[s][next_of[s]])
        ids.append(s)
        next_of[s] += 1
    logits = ctx.decode(np.array(toks), np.array(ids))
    # the last token of each sequence gives logits, in batch order: map rows back to sequences
    last = {s: max(i for i, t in enumerate(ids) if t == s) for s in range(len(prompts))}
    order = sorted(last.values())
    return [logits[order.index(last[s])] for s in range(len(prompts))]


def greedy_together(ctx: RuntimeContext, prompts: list[np.ndarray], steps: int, rng) -> list[list[int]]:
    """prefill_together, then every decode step of all sequences in one batch."""
    out = [[int(np.argmax(row))] for row in prefill_together(ctx, prompts, rng)]
    for _ in range(steps - 1):
        logits = ctx.decode(np.array([o[-1] for o in out]), np.arange(len(prompts)))
        for s in range(len(prompts)):
            out[s].append(int(np.argmax(logits[s])))
    return out


def prompts_for(model: RuntimeModel, rng, lengths=(37, 5, 80, 13)) -> list[np.ndarray]:
    return [rng.integers(0, model.n_vocab, size=n) for n in lengths]


@pytest.fixture(scope="module")
def default_runtime_model(default_model_file):
    with RuntimeModel(default_model_file) as m:
        yield m


@pytest.mark.parametrize("n_batch", [512, 16])  # 16: prompts cut across graphs, sequences mixed in each
def test_four_sequences_together_equal_alone(default_runtime_model, n_batch):
    m, rng = default_runtime_model, np.random.default_rng(n_batch)
    prompts = prompts_for(m, rng)
    alone = [greedy_alone(m, p, STEPS, n_ctx=256) for p in prompts]
    with RuntimeContext(m, n_ctx=4 * 256, n_batch=n_batch, n_threads=2, n_seq_max=4) as ctx:
        assert (ctx.n_seq_max, ctx.n_ctx_seq, ctx.n_ctx) == (4, 256, 1024)
        assert greedy_together(ctx, prompts, STEPS, rng) == alone
        assert [ctx.seq_n_past(s) for s in range(4)] == [p.size + STEPS - 1 for p in prompts]


@pytest.mark.parametrize("type_kv", ["f16", "q4_0"])  # q4_0: rows Hadamard-rotated in the graph
def test_graph_pieces_path_runs_sequences_together(synthetic_model, monkeypatch, type_kv):
    """The executor's per-span kernel calls (how the GPU runs) on the CPU."""
    t = KV_TYPES[type_kv]
    with RuntimeModel(synthetic_model("qwen2", "F16", n_ctx_train=64)) as m:
        rng = np.random.default_rng(1)
        prompts = prompts_for(m, rng, (9, 21, 3))
        alone = [greedy_alone(m, p, STEPS, n_ctx=64, type_k=t, type_v=t) for p in prompts]
        monkeypatch.setenv("GGML_REROPE_RUNTIME_ATTN", "outside")
        with RuntimeContext(m, n_ctx=3 * 64, n_batch=8, n_threads=2, n_seq_max=3, type_k=t, type_v=t) as ctx:
            assert greedy_together(ctx, prompts, STEPS, rng) == alone


def test_rotated_cache_sequences_together_in_graph(synthetic_model):
    """The in-graph node path with a q8_0 cache: rows rotated per row, whatever the batch."""
    t = KV_TYPES["q8_0"]
    with RuntimeModel(synthetic_model("llama", "Q8_0", n_ctx_train=64)) as m:
        rng = np.random.default_rng(3)
        prompts = prompts_for(m, rng, (37, 5, 80, 13))
        alone = [greedy_alone(m, p, STEPS, n_ctx=128, type_k=t, type_v=t) for p in prompts]
        with RuntimeContext(m, n_ctx=4 * 128, n_batch=32, n_threads=2, n_seq_max=4, type_k=t, type_v=t) as ctx:
            assert greedy_together(ctx, prompts, STEPS, rng) == alone


def forced_alone(model, prompt, forced, n_ctx, n_batch, t) -> np.ndarray:
    """Logits after the prompt and after each forced token, one sequence in its own context."""
    with RuntimeContext(model, n_ctx=n_ctx, n_batch=n_batch, n_threads=2, type_k=t, type_v=t) as ctx:
        rows = [ctx.decode(prompt, np.zeros(prompt.size))[-1]]
        rows += [ctx.decode(np.array([tok]), np.zeros(1))[-1] for tok in forced]
        return np.array(rows)


def forced_together(model, prompts, forced, n_ctx, t, rng) -> list[np.ndarray]:
    """The same logits for every sequence, all in one context: prompts interleaved, then each step of all."""
    n = len(prompts)
    with RuntimeContext(model, n_ctx=n * n_ctx, n_batch=32, n_threads=2, n_seq_max=n, type_k=t, type_v=t) as ctx:
        rows = [[r] for r in prefill_together(ctx, prompts, rng)]
        for k in range(len(forced[0])):
            out = ctx.decode(np.array([f[k] for f in forced]), np.arange(n))
            for s in range(n):
                rows[s].append(out[s])
        return [np.array(r) for r in rows]


def together_vs_alone_gaps(model, type_kv, seed=2):
    """Teacher-forced, so a near-tie cannot fork the sequences: (largest |logit| difference together vs
    alone, the same between two batchings of the alone run, the largest |logit|). The second is the
    engine's own rounding noise (its matrix products are not batch-invariant on the GPU: a 7-token
    batch and a 512-token one take different kernels); a wrong value (a sequence seeing another's rows)
    is a difference of the logits' own size."""
    t = KV_TYPES[type_kv]
    rng = np.random.default_rng(seed)
    prompts = prompts_for(model, rng, (37, 5, 80, 13))
    forced = [rng.integers(0, model.n_vocab, size=STEPS - 1) for _ in prompts]
    alone = [forced_alone(model, p, f, 128, 512, t) for p, f in zip(prompts, forced)]
    rebatched = [forced_alone(model, p, f, 128, 7, t) for p, f in zip(prompts, forced)]
    together = forced_together(model, prompts, forced, 128, t, rng)
    gap = max(np.abs(g - a).max() for g, a in zip(together, alone))
    noise = max(np.abs(r - a).max() for r, a in zip(rebatched, alone))
    return gap, noise, max(np.abs(a).max() for a in alone)


def assert_within_own_noise(gap, noise, scale):
    msg = f"together vs alone {gap:.4g}, own noise {noise:.4g}, |logit| {scale:.3g}"
    assert gap <= max(4 * noise, 1e-3 * scale), msg


@pytest.mark.parametrize("type_kv", ["f16", "q8_0"])  # q8_0: rows Hadamard-rotated in the graph
def test_sequences_together_within_own_noise(synthetic_model, type_kv):
    """The check the GPU test makes, on the CPU (where both gaps are near zero)."""
    with RuntimeModel(synthetic_model("llama", "Q8_0", n_ctx_train=64)) as m:
        assert_within_own_noise(*together_vs_alone_gaps(m, type_kv))


@pytest.mark.needs_cuda_runtime
@pytest.mark.parametrize("type_kv", ["f16", "q8_0"])
def test_sequences_together_on_the_gpu(synthetic_model, type_kv):
    """Greedy tokens are no test here: on the GPU the random model's near-ties (top-2 margins of 0.005)
    flip under rounding. Logits, teacher-forced, within the GPU's own batching noise."""
    with RuntimeModel(synthetic_model("llama", "Q8_0", n_ctx_train=64), n_gpu_layers=-1) as m:
        assert_within_own_noise(*together_vs_alone_gaps(m, type_kv))


def test_logits_do_not_depend_on_the_other_sequences(synthetic_model):
    with RuntimeModel(synthetic_model("llama", "Q8_0", n_ctx_train=64)) as m:
        rng = np.random.default_rng(3)
        mine = rng.integers(0, m.n_vocab, size=30)
        rows = []
        for other_len in (1, 50):  # what sequence 1 holds differs, the batch shape too
            with RuntimeContext(m, n_ctx=2 * 64, n_batch=64, n_threads=2, n_seq_max=2) as ctx:
                ctx.decode(rng.integers(0, m.n_vocab, size=other_len), np.ones(other_len))
                toks = np.concatenate([mine, rng.integers(0, m.n_vocab, size=7)])
                ids = np.concatenate([np.zeros(mine.size), np.ones(7)])
                flags = np.concatenate([np.ones(mine.size), np.zeros(7)])
                rows.append(ctx.decode(toks, ids, flags))
        with RuntimeContext(m, n_ctx=64, n_batch=64, n_threads=2) as alone:
            ref = alone.decode(mine, np.zeros(mine.size), np.ones(mine.size))
        assert rows[0].shape == (mine.size, m.n_vocab)
        np.testing.assert_allclose(rows[0], rows[1], rtol=0, atol=1e-4)
        np.testing.assert_allclose(rows[0], ref, rtol=0, atol=1e-4)


def test_each_sequence_has_its_own_scheme(synthetic_model):
    with RuntimeModel(synthetic_model("llama", "F32", n_ctx_train=64)) as m:
        rng = np.random.default_rng(4)
        prompts = prompts_for(m, rng, (60, 60))
        schemes = [dict(window=8), dict(window=2**31 - 1, logn_train_len=0)]
        alone = [greedy_alone(m, p, STEPS, n_ctx=80, scheme=sc) for p, sc in zip(prompts, schemes)]
        assert alone[1] != greedy_alone(m, prompts[1], STEPS, 80, schemes[0])  # the schemes differ here
        with RuntimeContext(m, n_ctx=2 * 80, n_threads=2, n_seq_max=2) as ctx:
            for s, sc in enumerate(schemes):
                ctx.seq_set_scheme_fields(s, **sc)
            assert greedy_together(ctx, prompts, STEPS, rng) == alone
            # the same prompts under one shared scheme: sequence 1 then follows sequence 0's scheme
            ctx.set_scheme_fields(**schemes[0])
            for s in range(2):
                ctx.seq_truncate(s, 0)
            assert greedy_together(ctx, prompts, STEPS, rng)[1] == greedy_alone(m, prompts[1], STEPS, 80, schemes[0])


def test_truncate_and_remove_touch_one_sequence(synthetic_model):
    with RuntimeModel(synthetic_model("llama", "F32", n_ctx_train=64)) as m:
        rng = np.random.default_rng(5)
        a, b = rng.integers(0, m.n_vocab, size=20), rng.integers(0, m.n_vocab, size=20)
        with RuntimeContext(m, n_ctx=2 * 40, n_threads=2, n_seq_max=2) as ctx:
            ctx.decode(np.concatenate([a, b]), np.repeat([0, 1], 20), np.zeros(40))
            ctx.seq_truncate(0, 5)
            ctx.seq_kv_remove(1, 2, 6)
            assert (ctx.seq_n_past(0), ctx.seq_n_past(1)) == (5, 16)
            got = ctx.decode(np.array([a[5], b[0]]), np.array([0, 1]))
        # sequence 0 continues its kept prefix; sequence 1 after its shift, as one alone would
        with RuntimeContext(m, n_ctx=40, n_threads=2) as ref0, RuntimeContext(m, n_ctx=40, n_threads=2) as ref1:
            want0 = ref0.decode(a[:6], np.zeros(6))[-1]
            ref1.decode(b, np.zeros(20), np.zeros(20))
            ref1.seq_kv_remove(0, 2, 6)
            want1 = ref1.decode(b[:1], np.zeros(1))[-1]
        np.testing.assert_allclose(got[0], want0, atol=1e-4, rtol=0)
        np.testing.assert_allclose(got[1], want1, atol=1e-4, rtol=0)


def test_errors_name_the_problem_and_change_nothing(synthetic_model):
    with RuntimeModel(synthetic_model("llama", "F32", n_ctx_train=64)) as m:
        with pytest.raises(InvalidArgumentError, match="n_seq_max must be in 1..256"):
            RuntimeContext(m, n_ctx=64, n_seq_max=0)
        with pytest.raises(InvalidArgumentError, match="n_ctx must be >= n_seq_max"):
            RuntimeContext(m, n_ctx=3, n_seq_max=4)
        with RuntimeContext(m, n_ctx=2 * 16, n_batch=4, n_threads=2, n_seq_max=2) as ctx:
            ctx.decode(np.arange(10), np.zeros(10))
            ctx.decode(np.arange(3), np.ones(3))
            with pytest.raises(InvalidArgumentError, match=r"seq_id\[1\] = 2 is outside 0..1"):
                ctx.decode(np.array([1, 2]), np.array([0, 2]))
            with pytest.raises(ContextFullError, match="sequence 0 holds 10 tokens \\+ 7 new > n_ctx_seq = 16"):
                ctx.decode(np.arange(9), np.array([1, 1] + [0] * 7))
            with pytest.raises(InvalidArgumentError, match="seq must be in 0..1"):
                ctx.seq_truncate(2, 0)
            with pytest.raises(InvalidArgumentError, match=r"n_keep must be in 0..n_past \(3\)"):
                ctx.seq_truncate(1, 4)
            assert (ctx.seq_n_past(0), ctx.seq_n_past(1)) == (10, 3)  # nothing moved
            assert ctx.seq_n_past(5) == 0


def test_decode_refuses_malformed_batches(synthetic_model):
    from ggml_rerope._binding import ffi, last_error, lib

    with RuntimeModel(synthetic_model("llama", "F32", n_ctx_train=64)) as m, \
            RuntimeContext(m, n_ctx=32, n_threads=2, n_seq_max=2) as ctx:
        assert lib.ggml_rerope_decode(ctx.ptr, ffi.NULL, ffi.NULL) == lib.GGML_REROPE_ERR_INVALID_ARG
        assert "batch must not be NULL" in last_error()
        tokens = ffi.new("int32_t[]", [1, 2])
        for n, toks, msg in ((-1, tokens, "n_tokens must be >= 0, got -1"), (2, ffi.NULL, "tokens is NULL")):
            batch = ffi.new("ggml_rerope_batch *", {"n_tokens": n, "tokens": toks})
            assert lib.ggml_rerope_decode(ctx.ptr, batch, ffi.NULL) == lib.GGML_REROPE_ERR_INVALID_ARG
            assert msg in last_error()
        with pytest.raises(InvalidArgumentError, match="tokens\\[1\\] = 999999 is outside the vocabulary"):
            ctx.decode(np.array([1, 999999]), np.array([0, 1]))
        with pytest.raises(ValueError, match="seq_ids has 1 entries for 2 tokens"):
            ctx.decode(np.array([1, 2]), np.array([0]))
        assert (ctx.seq_n_past(0), ctx.seq_n_past(1)) == (0, 0)
