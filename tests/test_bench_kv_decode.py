"""The long-context decode benchmark per cache type runs and reports sane numbers (tiny, no timing goal)."""

import json

import numpy as np

from ggml_rerope._internals import KV_TYPES, RuntimeContext, RuntimeModel
from ggml_rerope.bench import kv_decode


def test_tiled_state_holds_the_rows_repeated(default_model_file):
    m = RuntimeModel(default_model_file)
    try:
        ctx = RuntimeContext(m, n_ctx=64, n_threads=2, type_k=KV_TYPES["q8_0"], type_v=KV_TYPES["f16"])
        ctx.decode(np.arange(10, 26), np.zeros(16), np.zeros(16))
        logits_16 = ctx.decode(np.array([7]), np.zeros(1))
        ctx.truncate(16)
        ctx.state_set(kv_decode.tiled_state(ctx, m.info, 16, 48, "q8_0", "f16"))
        assert ctx.n_past == 48
        ctx.truncate(16)  # the first 16 rows are the original ones: the same next logits
        np.testing.assert_array_equal(ctx.decode(np.array([7]), np.zeros(1)), logits_16)
        ctx.close()
    finally:
        m.close()


def test_cli_json(default_model_file, capsys):
    assert kv_decode.main([str(default_model_file), "--ctx", "256", "--fill", "64", "--steps", "1", "--repeats", "1",
                           "--threads", "2", "--types", "f16,q8_0", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["type"] for r in res["rows"]] == ["f16", "q8_0"] and res["rows"][0]["speed_vs_f16"] == 1.0
    assert all(r["ms_per_token"] > 0 for r in res["rows"])
    assert res["rows"][1]["kv_bytes_per_token"] < res["rows"][0]["kv_bytes_per_token"]
    assert kv_decode.main(["--types", "q3_k"]) == 2
