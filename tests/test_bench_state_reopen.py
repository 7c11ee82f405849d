"""The saved-state reopen benchmark runs end to end on a small state (no timing goal), and the state
it writes is a real one: loaded back, it holds its tokens."""

import json

from ggml_rerope import Model
from ggml_rerope.bench import state_reopen


def test_tiled_state_file_loads(default_model_file, tmp_path):
    path = str(tmp_path / "s.state")
    size = state_reopen.write_tiled_state(path, str(default_model_file), 200, 64, "q8_0", "q8_0", 2)
    assert size > 200 * 30 * 3 * 2 * 68  # 200 tokens x 30 layers x 3 heads x K and V rows of q8_0 (68 bytes)
    with Model(default_model_file, n_ctx=208, n_threads=2, kv_type="q8_0") as m:
        m.load_state_file(path)
        assert m.n_past == 200
        assert m.eval([13]).shape == (m.n_vocab,)


def test_cli_json(default_model_file, capsys):
    assert state_reopen.main([str(default_model_file), "--tokens", "300", "--fill", "64", "--repeats", "1",
                              "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["tokens"] == 300 and res["runs"][0]["n_loaded"] == 300
    assert res["reopen_s"] > 0 and res["file_bytes"] > 0
