"""`python -m ggml_rerope.bench server` end to end, tiny (1 and 2 clients, 8 tokens, one request
each, default model): both servers measured one after the other (ours alone with --no-peer where
llama-cpp-python's server cannot be imported), the JSON and table shape, every number positive,
and the token count checked against our server's usage chunk. Then the pieces without servers:
the percentile, the target ratios, and argument errors.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("sse_starlette")

from ggml_rerope.bench import server as bench_server  # noqa: E402
from ggml_rerope.bench.server_load import percentile, prompt_for  # noqa: E402
from ggml_rerope.bench.server_procs import PACKAGE_ROOT, peer_missing_modules  # noqa: E402

MAX_TOKENS = 8


@pytest.mark.needs_default_model
def test_bench_server_tiny(tmp_path):
    out = tmp_path / "server.json"
    with_peer = not peer_missing_modules()
    cmd = [sys.executable, "-m", "ggml_rerope.bench", "server", "--clients", "1,2", "--max-tokens", str(MAX_TOKENS),
           "--requests-per-client", "1", "--threads", "1", "--n-ctx", "512", "--json", str(out),
           "--ready-timeout", "60", "--request-timeout", "60", "--peer" if with_peer else "--no-peer"]
    r = subprocess.run(cmd, cwd=PACKAGE_ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(out.read_text())

    names = ["ours", "llama-cpp-python"] if with_peer else ["ours"]
    assert list(result["servers"]) == names
    assert result["parallel"] == 2 and result["threads"] == 1 and result["max_tokens"] == MAX_TOKENS
    for name in names:
        server = result["servers"][name]
        assert server["startup_s"] > 0 and "--port" not in server["command"]
        assert [run["clients"] for run in server["runs"]] == [1, 2]
        for run in server["runs"]:
            n = run["clients"]
            assert run["requests"] == run["requests_completed"] == n, run["errors"]
            assert 0 < run["generated_tokens"] <= n * MAX_TOKENS
            assert run["tok_s"] > 0 and run["wall_s"] > 0
            assert 0 < run["ttft_median_s"] <= run["ttft_p90_s"] < run["wall_s"]
            assert run["itl_median_s"] > 0
            # a line of the table for each run
            assert any(line.split()[:3] == [*name.split(), str(n), f"{n}/{n}"] for line in r.stdout.splitlines())
    for run in result["servers"]["ours"]["runs"]:
        # chunks with text never outnumber the tokens the server says it generated
        assert run["usage_completion_tokens"] is not None
        assert run["generated_tokens"] <= run["usage_completion_tokens"] <= run["clients"] * MAX_TOKENS
    if with_peer:
        assert list(result["ratios"]) == ["ours 1 / peer 1"]  # the only target with 1 and 2 clients
        ratio = result["ratios"]["ours 1 / peer 1"]
        ours1, peer1 = (result["servers"][k]["runs"][0]["tok_s"] for k in names)
        assert ratio["ratio"] == pytest.approx(ours1 / peer1) and ratio["met"] == (ratio["ratio"] >= 1.0)
        assert "ours 1 / peer 1" in r.stdout
    else:
        assert result["ratios"] == {} and "peer not measured" in r.stdout
    assert "TTFT med ms" in r.stdout


def test_percentile_matches_inclusive_quantiles():
    values = [0.3, 1.7, 0.2, 5.0, 2.2, 0.9, 3.1]
    assert percentile(values, 0.9) == pytest.approx(statistics.quantiles(values, n=10, method="inclusive")[8])
    assert percentile([2.5], 0.9) == 2.5 and percentile([], 0.5) is None


def test_prompts_distinct():
    prompts = [prompt_for(i) for i in range(64)]
    assert len(set(prompts)) == len(prompts)
    assert prompt_for(0, "(warm-up) ") != prompt_for(0)


def _servers(**tok_s):
    """{"ours": {"runs": [...]}, ...} from keywords like ours_1=10.0, peer_4=3.0."""
    out: dict = {}
    for key, value in tok_s.items():
        name, clients = key.rsplit("_", 1)
        server = {"ours": "ours", "peer": "llama-cpp-python"}[name]
        out.setdefault(server, {"runs": []})["runs"].append({"clients": int(clients), "tok_s": value})
    return out


def test_ratios_only_those_measured():
    servers = _servers(ours_1=10.0, ours_4=30.0, ours_8=35.0, peer_1=12.0, peer_4=12.0)
    cpu = bench_server.ratios(servers, on_gpu=False)
    assert set(cpu) == {"ours 4 / ours 1", "ours 4 / peer 4", "ours 1 / peer 1"}
    assert cpu["ours 4 / ours 1"]["ratio"] == pytest.approx(3.0) and cpu["ours 4 / ours 1"]["met"]
    assert cpu["ours 4 / peer 4"]["ratio"] == pytest.approx(2.5) and cpu["ours 4 / peer 4"]["met"]
    assert not cpu["ours 1 / peer 1"]["met"]
    gpu = bench_server.ratios(servers, on_gpu=True)
    assert gpu["ours 8 / ours 1"]["ratio"] == pytest.approx(3.5) and not gpu["ours 8 / ours 1"]["met"]
    assert bench_server.ratios(_servers(ours_1=5.0, ours_2=9.0), on_gpu=False) == {}


def test_bad_arguments(capsys):
    assert bench_server.main(["--max-tokens", "0", "--no-peer"]) == 1
    assert bench_server.main(["--model", "/nonexistent/model.gguf", "--no-peer"]) == 1
    assert "model file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_server.main(["--clients", "1,x"])
    with pytest.raises(SystemExit):
        bench_server.main(["--clients", "0"])
