"""LongRoPE's search (ggml_rerope.longrope_search / longrope_evolution) and its factors file, on a
tiny random model: the constraints, elitism, resume, the file's round trip through
--longrope-factors, and short / long factors switching by length."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from ggml_rerope import longrope_evolution as evo
from ggml_rerope import longrope_search
from ggml_rerope.longrope_factors import LongRopeFactors, read_factors_file, write_factors_file
from ggml_rerope.scheme_flags import add_scheme_arguments, scheme_options_from_args
from ggml_rerope.schemes import ModelHyper, make_scheme

N_TRAIN, TARGET = 64, 256
SEARCH = ["--target-ctx", str(TARGET), "--population", "8", "--parents", "4", "--threads", "1",
          "--calib-windows", "2", "--no-progress", "--seed", "5"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, synthetic_model):
    """(model, text): a 2-layer random llama trained to 64 tokens and a text of a few thousand tokens."""
    model = synthetic_model("llama", "F32", seed=21, n_ctx_train=N_TRAIN)
    rng = random.Random(3)
    words = "the cat sat on a mat and then it ran far away over green hills".split()
    text = tmp_path_factory.mktemp("longrope_text") / "text.txt"
    text.write_text(" ".join(rng.choice(words) for _ in range(1500)))
    return model, text


def _run(tiny, out, *extra):
    model, text = tiny
    rc = longrope_search.main([str(model), str(text), *SEARCH, "--out", str(out), *extra])
    assert rc == 0
    return read_factors_file(out), [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("longrope_a") / "f.json"
    return _run(tiny, out, "--generations", "3")


# ------------------------------------------------------------------ the algorithm alone


SPACE = evo.SearchSpace(n_pairs=24, max_divisor=10.0, n_hat_max=8, step=0.01)


def test_constraints_hold_after_mutation_and_crossover():
    rng = np.random.default_rng(0)
    pool = [SPACE.project(rng.uniform(0.5, 12.0, SPACE.n_pairs), int(rng.integers(0, 9))) for _ in range(6)]
    pool += [SPACE.project(np.full(SPACE.n_pairs, 4.0), 0), SPACE.project(np.ones(SPACE.n_pairs), 0)]
    assert all(not SPACE.violations(g) for g in pool)
    changed = 0
    for _ in range(400):
        a, b = (pool[int(i)] for i in rng.choice(len(pool), 2, replace=False))
        child = evo.mutate(a, SPACE, rng, 0.3, 0.3) if rng.random() < 0.5 else evo.crossover(a, b, SPACE, rng)
        assert SPACE.violations(child) == [], child
        changed += child != a
        pool.append(child)
    assert changed > 300  # the operators do move
    assert len({g.n_hat for g in pool}) > 3  # n_hat is searched
    d = SPACE.divisors(pool[-1])
    assert np.all(np.diff(d) >= 0) and np.all(d[: pool[-1].n_hat] == 1.0) and d.max() <= 10.0


def test_violations_name_each_broken_constraint():
    ok = SPACE.project(np.linspace(1, 5, SPACE.n_pairs), 3)
    t = list(ok.ticks)
    assert SPACE.violations(ok) == []
    assert SPACE.violations(evo.Genome(3, tuple(t[:5] + [t[4] - 1] + t[6:]))) == [
        "divisors decrease from high to low frequency"]
    assert SPACE.violations(evo.Genome(3, (1, 1, 1) + tuple(t[3:]))) == [
        "one of the first n_hat = 3 divisors is not 1"]
    assert SPACE.violations(evo.Genome(3, tuple(t[:-1] + [SPACE.max_tick + 1]))) == [
        "a divisor outside [1, 10.0]"]
    assert SPACE.violations(evo.Genome(9, tuple([0] * 9) + tuple(t[9:]))) == ["n_hat 9 outside 0 .. 8"]


def test_seeds_are_pi_ntk_and_yarn():
    hyper = ModelHyper(n_rot=64, rope_base=10000.0, n_ctx_train=N_TRAIN, head_dim=64)
    seeds = evo.seed_divisors(hyper, TARGET)
    assert set(seeds) == {"pi", "ntk", "yarn"}
    np.testing.assert_allclose(seeds["pi"], 4.0)
    assert seeds["ntk"][0] == pytest.approx(1.0) and seeds["ntk"][-1] == pytest.approx(4.0)
    np.testing.assert_allclose(1 / seeds["yarn"], make_scheme("yarn", hyper, TARGET).freq_factors)
    assert all(np.all(np.diff(v) >= -1e-12) for v in seeds.values())


# ------------------------------------------------------------------ the search on the runtime


def test_best_loss_never_rises_and_is_the_runtime_loss(tiny, uninterrupted):
    factors, log = uninterrupted
    gens = [e for e in log if e["event"] == "generation"]
    assert [e["generation"] for e in gens] == [0, 1, 2, 3]
    best = [e["best_loss"] for e in gens]
    assert all(b <= a for a, b in zip(best, best[1:])), best
    evals = [e for e in log if e["event"] == "eval"]
    assert len(evals) == 8 + 3 * 4 and len({tuple(e["divisors"]) + (e["n_hat"],) for e in evals}) == len(evals)
    assert min(e["loss"] for e in evals) == best[-1]
    origins = {e["origin"] for e in evals}
    assert {"pi", "ntk", "yarn", "mutation", "crossover"} <= origins
    made = factors.meta["long_search"]
    assert made["calibration_loss"] == best[-1] and made["target_ctx"] == TARGET
    assert made["calibration_tokens"][-1][1] == len(_tokens(tiny))  # by default the text's last windows
    assert _runtime_loss(tiny, factors) == pytest.approx(best[-1], abs=1e-6)
    assert factors.short == (1.0,) * len(factors.long)  # a long search: short set of ones


def _tokens(tiny):
    from ggml_rerope import Model

    with Model(str(tiny[0]), n_ctx=16, n_threads=1) as m:
        return m.tokenize(tiny[1].read_text(), add_bos=True)


def _runtime_loss(tiny, factors, score_last=None):
    """The loss of the windows the factors file names, through Model.logits under its long set."""
    from ggml_rerope import Model
    from ggml_rerope.perplexity import _window, token_nll

    tokens = _tokens(tiny)
    with Model(str(tiny[0]), n_ctx=TARGET, n_batch=TARGET, n_threads=1, rope_scaling="longrope",
               rope_options={"factors": list(factors.long)}) as m:
        add_bos = bool(m.tokenize("", add_bos=True))  # the perplexity tool's BOS rule
        nll = []
        for start, end in factors.meta["long_search"]["calibration_tokens"]:
            window = _window(tokens, start, end - start, m.tokenizer.bos_id, add_bos)
            nll.append(token_nll(m.logits(window)[:-1], window[1:])[-(score_last or TARGET):])
    return float(np.concatenate(nll).mean())


def test_score_last_scores_the_windows_end(tiny, tmp_path):
    factors, log = _run(tiny, tmp_path / "f.json", "--generations", "0", "--score-last", "40",
                        "--calib-start", "100")
    assert factors.meta["long_search"]["calibration_tokens"] == [[100, 100 + TARGET], [100 + TARGET, 100 + 2 * TARGET]]
    assert _runtime_loss(tiny, factors, score_last=40) == pytest.approx(factors.meta["long_search"]["calibration_loss"],
                                                                       abs=1e-6)
    assert _runtime_loss(tiny, factors) != pytest.approx(factors.meta["long_search"]["calibration_loss"], abs=1e-3)


def test_resume_gives_the_uninterrupted_result(tiny, uninterrupted, tmp_path, monkeypatch):
    factors_a, log_a = uninterrupted
    out = tmp_path / "f.json"
    calls, real = [0], longrope_search.CalibrationLoss.__call__

    def interrupted(self, divisors):  # Ctrl-C in the middle of generation 2
        calls[0] += 1
        if calls[0] == 8 + 4 + 2:
            raise KeyboardInterrupt
        return real(self, divisors)

    monkeypatch.setattr(longrope_search.CalibrationLoss, "__call__", interrupted)
    model, text = tiny
    assert longrope_search.main([str(model), str(text), *SEARCH, "--out", str(out), "--generations", "3"]) == 130
    monkeypatch.setattr(longrope_search.CalibrationLoss, "__call__", real)
    state = json.loads(out.with_suffix(".state.json").read_text())
    assert state["boundary"]["generation"] == 1 and len(state["cache"]) == 8 + 4 + 1
    _run(tiny, out, "--generations", "2")  # resumes, then one more run extends it
    factors_b, log_b = _run(tiny, out, "--generations", "3")
    assert factors_b == factors_a and factors_b.meta == factors_a.meta
    evals = [e for e in log_b if e["event"] == "eval"]
    assert len(evals) == 8 + 3 * 4  # nothing evaluated twice across the three runs
    key = [(e["n_hat"], e["divisors"], e["loss"]) for e in log_a if e["event"] == "eval"]
    assert [(e["n_hat"], e["divisors"], e["loss"]) for e in evals] == key


def test_resume_with_other_settings_is_refused(tiny, uninterrupted, tmp_path, capsys):
    out = tmp_path / "f.json"
    _run(tiny, out, "--generations", "0")
    model, text = tiny
    rc = longrope_search.main([str(model), str(text), *SEARCH, "--out", str(out), "--generations", "1",
                               "--mutation-rate", "0.5"])
    assert rc == 1 and "other settings (mutation_rate)" in capsys.readouterr().err


def test_short_search_keeps_the_long_set(tiny, uninterrupted, tmp_path):
    factors_a, _ = uninterrupted
    base = tmp_path / "base.json"
    write_factors_file(base, factors_a)
    factors, log = _run(tiny, tmp_path / "short.json", "--generations", "1", "--base-factors", str(base),
                        "--target-ctx", str(N_TRAIN), "--calib-windows", "1")
    assert factors.long == factors_a.long and factors.meta["long_search"] == factors_a.meta["long_search"]
    assert factors.meta["short_search"]["target_ctx"] == N_TRAIN
    d = np.array(factors.short)
    assert np.all(np.diff(d) >= 0) and d.min() >= 1.0 and d.max() <= 1.25  # s = 1: [1, 1.25 s]
    _, log = _run(tiny, tmp_path / "again.json", "--generations", "0", "--base-factors", str(base))
    assert "base" in {e["origin"] for e in log if e["event"] == "eval"}  # a previous search seeds a new one
    model, text = tiny
    assert longrope_search.main([str(model), str(text), *SEARCH, "--target-ctx", str(N_TRAIN),
                                 "--out", str(tmp_path / "x.json")]) == 1  # short needs --base-factors


# ------------------------------------------------------------------ the factors file


def test_factors_file_round_trips_and_the_flag_reads_it(uninterrupted, tmp_path):
    factors, _ = uninterrupted
    path = tmp_path / "copy.json"
    write_factors_file(path, factors)
    again = read_factors_file(path)
    assert again == factors and again.meta == factors.meta
    import argparse

    p = argparse.ArgumentParser()
    add_scheme_arguments(p)
    name, options = scheme_options_from_args(p.parse_args(["--rope-scaling", "longrope", "--longrope-factors",
                                                           str(path)]))
    assert name == "longrope" and options == {"factors": list(factors.long), "short_factors": list(factors.short)}
    hyper = ModelHyper(n_rot=64, rope_base=10000.0, n_ctx_train=N_TRAIN, head_dim=64)
    sch = make_scheme(name, hyper, TARGET, **options)
    np.testing.assert_allclose(sch.resolve(TARGET).freq_factors, 1 / np.array(factors.long))
    np.testing.assert_allclose(sch.resolve(N_TRAIN).freq_factors, 1 / np.array(factors.short))
    with pytest.raises(ValueError, match="long_factor"):
        LongRopeFactors([1.0, -2.0])


def test_short_factors_below_the_trained_context_long_ones_above(tiny):
    from ggml_rerope import Model

    model, _ = tiny
    rng = np.random.default_rng(4)
    long = np.sort(1 + 3 * rng.random(32))
    short = np.sort(1 + 0.2 * rng.random(32))
    toks_in, toks_out = rng.integers(0, 384, N_TRAIN).tolist(), rng.integers(0, 384, 3 * N_TRAIN).tolist()

    def logits(tokens, **options):
        with Model(str(model), n_ctx=TARGET, n_batch=TARGET, n_threads=1, rope_scaling="longrope",
                   rope_options=options) as m:
            return m.logits(tokens)

    both = dict(factors=long.tolist(), short_factors=short.tolist())
    np.testing.assert_allclose(logits(toks_in, **both), logits(toks_in, factors=short.tolist(), attn_factor=1.0),
                               atol=1e-5)
    np.testing.assert_allclose(logits(toks_out, **both), logits(toks_out, factors=long.tolist()), atol=1e-5)
    assert np.abs(logits(toks_out, **both) - logits(toks_out, factors=short.tolist())).max() > 1e-2
    # short factors of ones: inside the trained context this is plain RoPE
    with Model(str(model), n_ctx=TARGET, n_batch=TARGET, n_threads=1, rope_scaling="none") as m:
        rope = m.logits(toks_in)
    np.testing.assert_allclose(logits(toks_in, factors=long.tolist(), short_factors=[1.0] * 32), rope, atol=1e-5)
