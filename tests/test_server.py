"""The OpenAI-compatible server over real HTTP on 127.0.0.1, with the `openai` client: chat and
text completions (plain and streamed), stop sequences, concurrent streams, the per-request
position scheme, every error case, disconnects, the API key, and a small bounded load test.

One server (default model, 2 slots of n_ctx 512, one thread each, a queue of 2, an API key) serves
the module. Answers at temperature 0 are compared with an in-process ggml_rerope.Llama of the same
settings; `cache_prompt: false` makes each request evaluate its prompt from scratch, so the
comparison does not depend on which slot served what before (prefix reuse may round differently).
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("sse_starlette")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from ggml_rerope import Llama  # noqa: E402
from server_process import running_server  # noqa: E402

pytestmark = pytest.mark.needs_default_model

KEY = "test-key"
N_CTX = 512
FRESH = {"cache_prompt": False, "repeat_penalty": 1.0}
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
PROMPTS = ["The capital of France is", "def fibonacci(n):", "List three colors:", "Water boils at"]
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(default_model_file):
    args = [str(default_model_file), "-c", str(N_CTX), "-np", "2", "-t", "1", "--queue-size", "2", "--api_key", KEY]
    with running_server(args) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    c = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    yield c
    c.close()


@pytest.fixture(scope="module")
def local(default_model_file):
    """The same model and settings in this process: what the server must answer."""
    with Llama(str(default_model_file), n_ctx=N_CTX, n_threads=1, verbose=False) as llm:
        yield llm


def metrics(server) -> dict:
    text = httpx.get(server.url + "/metrics", headers=AUTH, timeout=5).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def wait_for(predicate, timeout_s=5.0, step=0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# -- models, health, tokens --------------------------------------------------------------------


def test_models_health_and_tokenizer(server, client, local, default_model_file):
    models = client.models.list()
    assert [m.id for m in models.data] == [default_model_file.name]
    r = httpx.get(server.url + "/health", timeout=5)  # no key needed
    assert r.status_code == 200 and r.json()["status"] == "ok"
    text = "Hello world, <|im_start|> and Ünïcödé"
    toks = httpx.post(server.url + "/tokenize", json={"content": text}, headers=AUTH).json()["tokens"]
    assert toks == local.tokenize(text.encode(), add_bos=False, special=True)
    back = httpx.post(server.url + "/detokenize", json={"tokens": toks}, headers=AUTH).json()["content"]
    assert back == local.detokenize(toks, special=False).decode()
    pieces = httpx.post(server.url + "/tokenize", json={"content": "Hello world", "with_pieces": True},
                        headers=AUTH).json()["tokens"]
    assert "".join(p["piece"] for p in pieces) == "Hello world"
    extras = httpx.post(server.url + "/extras/tokenize/count", json={"input": text}, headers=AUTH).json()
    assert extras["count"] == len(toks)


# -- chat and completion ----------------------------------------------------------------------


def test_chat_completion_matches_the_library(client, local):
    reply = client.chat.completions.create(model="anything", messages=QUESTION, temperature=0, max_tokens=16,
                                           extra_body=FRESH)
    want = local.create_chat_completion(QUESTION, temperature=0, max_tokens=16)
    assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion" and reply.model == "anything"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == want["choices"][0]["message"]["content"]
    assert reply.choices[0].finish_reason == want["choices"][0]["finish_reason"]
    assert reply.usage.prompt_tokens == want["usage"]["prompt_tokens"]
    assert reply.usage.completion_tokens == want["usage"]["completion_tokens"]


def test_chat_stream_ends_with_done_and_equals_the_whole_answer(server, client):
    whole = client.chat.completions.create(model="m", messages=QUESTION, temperature=0, max_tokens=16,
                                           extra_body=FRESH)
    chunks = list(client.chat.completions.create(model="m", messages=QUESTION, temperature=0, max_tokens=16,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body=FRESH))
    assert chunks[0].choices[0].delta.role == "assistant"
    body = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in body) == whole.choices[0].message.content
    assert body[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # include_usage
    # on the wire: SSE data lines, the last one [DONE]
    with httpx.stream("POST", server.url + "/v1/chat/completions", headers=AUTH, timeout=30,
                      json={"messages": QUESTION, "max_tokens": 4, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        data = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]" and json.loads(data[0])["object"] == "chat.completion.chunk"


def test_completion_stream_and_stop_sequences(client, local):
    prompt = PROMPTS[0]
    want = local(prompt, temperature=0, max_tokens=12)["choices"][0]["text"]
    got = client.completions.create(model="m", prompt=prompt, temperature=0, max_tokens=12, extra_body=FRESH)
    assert got.id.startswith("cmpl-") and got.object == "text_completion"
    assert got.choices[0].text == want and got.choices[0].finish_reason == "length"
    assert got.usage.completion_tokens == 12
    # a stop string from the middle of the answer (test_llama_dropin.py makes one span two tokens)
    middle = len(want) // 2
    stop = want[middle:middle + 4]
    cut = want[: want.index(stop)]
    stopped = client.completions.create(model="m", prompt=prompt, temperature=0, max_tokens=12, stop=[stop, "zzz"],
                                        extra_body=FRESH)
    assert stopped.choices[0].text == cut and stopped.choices[0].finish_reason == "stop"
    pieces = [c.choices[0].text for c in client.completions.create(
        model="m", prompt=prompt, temperature=0, max_tokens=12, stop=stop, stream=True, extra_body=FRESH)]
    assert "".join(pieces) == cut
    shown = ""
    for p in pieces:  # never shows a part of the stop string it takes back later
        shown += p
        assert cut.startswith(shown)


def test_completion_logprobs_and_token_prompt(client, local):
    got = client.completions.create(model="m", prompt=PROMPTS[1], temperature=0, max_tokens=3, logprobs=2,
                                    extra_body=FRESH)
    lp = got.choices[0].logprobs
    assert len(lp.tokens) == 3 and all(len(t) >= 2 for t in lp.top_logprobs)
    assert "".join(lp.tokens) == got.choices[0].text and all(x <= 0 for x in lp.token_logprobs)
    tokens = local.tokenize(PROMPTS[1].encode())
    by_ids = client.completions.create(model="m", prompt=tokens, temperature=0, max_tokens=3, extra_body=FRESH)
    assert by_ids.choices[0].text == got.choices[0].text


def test_concurrent_streams_equal_sequential_answers(client):
    def plain(p):
        return client.completions.create(model="m", prompt=p, temperature=0, max_tokens=10,
                                         extra_body=FRESH).choices[0].text

    def streamed(p):
        return "".join(c.choices[0].text for c in client.completions.create(
            model="m", prompt=p, temperature=0, max_tokens=10, stream=True, extra_body=FRESH))

    sequential = [plain(p) for p in PROMPTS]
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:  # 2 slots + 2 queued
        concurrent_ = list(pool.map(streamed, PROMPTS))
    assert concurrent_ == sequential


def test_per_request_position_scheme(client, default_model_file):
    scheme = {"rope_scaling": "linear", "rope_scale": 4.0}
    got = client.completions.create(model="m", prompt=PROMPTS[3], temperature=0, max_tokens=10,
                                    extra_body={**FRESH, **scheme})
    with Llama(str(default_model_file), n_ctx=N_CTX, n_threads=1, verbose=False, rope_scaling="linear",
               rope_options={"scale": 4.0}) as linear:
        want = linear(PROMPTS[3], temperature=0, max_tokens=10)["choices"][0]["text"]
        assert got.choices[0].text == want
    plain = client.completions.create(model="m", prompt=PROMPTS[3], temperature=0, max_tokens=10, extra_body=FRESH)
    assert plain.choices[0].text != want  # positions / 4 change this answer: the field did something
    # rerope with its own window and without log-n; inside the window it is plain RoPE
    rerope = client.completions.create(model="m", prompt=PROMPTS[3], temperature=0, max_tokens=10,
                                       extra_body={**FRESH, "rerope_window": 256, "logn": False})
    none = client.completions.create(model="m", prompt=PROMPTS[3], temperature=0, max_tokens=10,
                                     extra_body={**FRESH, "rope_scaling": "none"})
    assert rerope.choices[0].text == none.choices[0].text == plain.choices[0].text
    # the newer schemes and their fields, a word among them
    chunked = client.completions.create(model="m", prompt=PROMPTS[3], temperature=0, max_tokens=4,
                                        extra_body={**FRESH, "rope_scaling": "dual-chunk", "chunk_size": 96,
                                                    "local_window": 16, "attn_temperature": "yarn"})
    assert chunked.choices[0].text


# -- errors -----------------------------------------------------------------------------------


def _error(r, status):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_prompt_longer_than_the_context(server, client):
    long_prompt = " ".join(["word"] * (N_CTX + 20))
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="m", prompt=long_prompt, max_tokens=4)
    assert e.value.code == "context_length_exceeded" and "maximum context length is 512" in e.value.message
    r = httpx.post(server.url + "/v1/chat/completions", headers=AUTH, timeout=30,
                   json={"messages": [{"role": "user", "content": long_prompt}], "stream": True})
    assert _error(r, 400)["code"] == "context_length_exceeded"  # streams too: before any byte is sent


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "top_p": 2}, "top_p"),
    ({"prompt": "x", "max_tokens": -3}, "max_tokens"),
    ({"prompt": "x", "n": 2}, "n"),
    ({"prompt": "x", "stop": 5}, "stop"),
    ({"prompt": ["a", "b"]}, "prompt"),
])
def test_bad_completion_fields_name_the_field(server, body, param):
    err = _error(httpx.post(server.url + "/v1/completions", headers=AUTH, json=body, timeout=10), 400)
    assert err["param"] is not None and err["param"].split(".")[0] == param and param in err["message"]


def test_bad_requests_are_openai_shaped(server):
    post = lambda path, **kw: httpx.post(server.url + path, headers={**AUTH, **kw.pop("headers", {})},  # noqa: E731
                                         timeout=10, **kw)
    err = _error(post("/v1/chat/completions", content=b'{"messages": [', headers={"Content-Type": "application/json"}),
                 400)
    assert err["code"] == "invalid_json"
    assert _error(post("/v1/chat/completions", json={"model": "m"}), 400)["param"] == "messages"
    err = _error(post("/v1/chat/completions", json={"messages": [{"role": "wizard", "content": "hi"}]}), 400)
    assert err["param"].startswith("messages")
    assert "bogus" in _error(post("/v1/completions", json={"prompt": "x", "rope_scaling": "bogus"}), 400)["message"]
    err = _error(post("/v1/completions", json={"prompt": "x", "rope_scaling": "linear", "rerope_window": 64}), 400)
    assert "rerope_window" in err["message"] and "--" not in err["message"]
    err = _error(post("/v1/completions", json={"prompt": "x", "rerope_window": "wide"}), 400)
    assert "rerope_window" in err["message"]
    err = _error(post("/v1/completions", json={"prompt": "x", "longrope_factors": "/etc/passwd",
                                               "rope_scaling": "longrope"}), 400)
    assert "list of numbers" in err["message"]
    assert _error(httpx.get(server.url + "/v1/nothing", headers=AUTH), 404)["type"] == "not_found_error"


def test_api_key_is_required(server):
    body = {"prompt": "x", "max_tokens": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        err = _error(httpx.post(server.url + "/v1/completions", json=body, headers=headers, timeout=10), 401)
        assert err["code"] == "invalid_api_key"
    assert _error(httpx.get(server.url + "/v1/models"), 401)["type"] == "authentication_error"
    assert _error(httpx.get(server.url + "/metrics"), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0).models.list()


# -- disconnects, metrics, load ---------------------------------------------------------------


def test_disconnect_frees_the_slot(server, local):
    before = metrics(server)
    # every end-of-generation token banned: the 400 tokens take far longer than the client waits,
    # whatever the sampler draws
    tok = local._model.tokenizer
    no_end = {str(t): -100.0 for t in range(tok.n_vocab) if tok.is_eog(t)}
    body = {"prompt": PROMPTS[2], "max_tokens": 400, "temperature": 0.7, "stream": True, "logit_bias": no_end}
    with httpx.stream("POST", server.url + "/v1/completions", headers=AUTH, json=body, timeout=30) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(4)]
        assert any(line.startswith("data: ") for line in got)
        assert metrics(server)["ggml_rerope_requests_processing"] == 1
    t0 = time.monotonic()
    assert wait_for(lambda: metrics(server)["ggml_rerope_requests_processing"] == 0, 3.0)
    freed_s = time.monotonic() - t0
    # a non-streamed request whose client gives up is stopped too
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", headers=AUTH, json={**body, "stream": False}, timeout=1.0)
    assert wait_for(lambda: metrics(server)["ggml_rerope_requests_processing"] == 0, 3.0)
    after = metrics(server)
    assert after['ggml_rerope_requests_total{outcome="cancelled"}'] >= before[
        'ggml_rerope_requests_total{outcome="cancelled"}'] + 2
    assert after["ggml_rerope_tokens_predicted_total"] - before["ggml_rerope_tokens_predicted_total"] < 300
    assert freed_s < 3.0


def test_metrics_count_tokens_and_time(server, client):
    before = metrics(server)
    out = client.completions.create(model="m", prompt=PROMPTS[0], temperature=0, max_tokens=5, extra_body=FRESH)
    after = metrics(server)
    assert after["ggml_rerope_tokens_predicted_total"] - before["ggml_rerope_tokens_predicted_total"] == 5
    assert after["ggml_rerope_prompt_tokens_total"] - before["ggml_rerope_prompt_tokens_total"] == \
        out.usage.prompt_tokens
    assert after["ggml_rerope_prompt_seconds_total"] > before["ggml_rerope_prompt_seconds_total"]
    assert after["ggml_rerope_tokens_predicted_seconds_total"] > before["ggml_rerope_tokens_predicted_seconds_total"]
    assert after["ggml_rerope_slots"] == 2 and after["ggml_rerope_kv_cache_capacity_tokens"] == 2 * N_CTX
    assert 0 < after["ggml_rerope_kv_cache_tokens"] <= 2 * N_CTX
    assert after["ggml_rerope_requests_deferred"] == 0
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    assert re.search(r"^# TYPE ggml_rerope_prompt_tokens_total counter$", text, re.M)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_bounded_load(server):
    """16 clients, 200 requests, at most 150 s: every answer complete; the only 5xx are the designed
    503s of a full queue (2 slots + 2 waiting < 16 clients), which the clients retry; the server's
    resident memory after the last 160 requests is where it was after the first 40."""
    deadline = time.monotonic() + 150
    statuses, lock = [], threading.Lock()

    def one(i: int):
        chat = i % 2 == 0
        path = "/v1/chat/completions" if chat else "/v1/completions"
        body = {"max_tokens": 4, "temperature": 0.5, "seed": i, "stream": i % 4 < 2}
        body.update({"messages": [{"role": "user", "content": f"Count to {i}."}]} if chat else {"prompt": f"{i} + 1 ="})
        with httpx.Client(headers=AUTH, timeout=30) as http:
            while time.monotonic() < deadline:
                if body["stream"]:
                    with http.stream("POST", server.url + path, json=body) as r:
                        status = r.status_code
                        data = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")] if status == 200 else []
                        retry = r.headers.get("retry-after")
                else:
                    r = http.post(server.url + path, json=body)
                    status, retry = r.status_code, r.headers.get("retry-after")
                    data = [json.dumps(r.json())] if status == 200 else []
                with lock:
                    statuses.append(status)
                if status == 503:
                    assert retry is not None and int(retry) >= 1
                    time.sleep(0.1)
                    continue
                assert status == 200, status
                if body["stream"]:
                    assert data[-1] == "[DONE]"
                    last = json.loads(data[-2])
                else:
                    last = json.loads(data[0])
                assert last["choices"][0]["finish_reason"] in ("stop", "length")
                return True
        return False

    pid = server.proc.pid
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        done = list(pool.map(one, range(40)))
        warm_rss = rss_bytes(pid)
        done += list(pool.map(one, range(40, 200)))
    assert all(done), "not every request finished within 150 s"
    assert set(statuses) <= {200, 503}
    assert statuses.count(200) == 200
    assert wait_for(lambda: metrics(server)["ggml_rerope_requests_processing"] == 0, 5.0)
    grown = rss_bytes(pid) - warm_rss
    assert grown < 48 << 20, f"resident memory grew by {grown >> 20} MiB over 160 requests"


def test_server_logged_no_internal_error(server):
    """Runs last: nothing above made the server fail inside (500s and tracebacks are logged)."""
    log = server.log()
    assert "Traceback" not in log and " 500 " not in log and "internal error" not in log, log[-3000:]
