"""`alignkit serve`: the OpenAI-compatible server over a model folder or a run folder."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from conftest import make_tiny_gpt2

from alignkit.commands.serve import ChatModel, make_server
from alignkit.workflow.model_io import load_run_model


@pytest.fixture(scope="module")
def server_url(tmp_path_factory, gpt2_tokenizer):
    run = tmp_path_factory.mktemp("run")  # a run folder: the model lives in model/
    make_tiny_gpt2().save_pretrained(run / "model")
    gpt2_tokenizer.save_pretrained(run / "model")
    model, tokenizer = load_run_model(run)
    server = make_server(ChatModel(model, tokenizer, "tiny"), port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _call(url, body=None):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_models_endpoint(server_url):
    status, body = _call(server_url + "/v1/models")
    assert status == 200 and body["data"][0]["id"] == "tiny"


def test_chat_completion_shape_limits_and_determinism(server_url):
    request = {"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 5,
               "temperature": 0}
    status, body = _call(server_url + "/v1/chat/completions", request)
    assert status == 200 and body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert body["usage"]["completion_tokens"] <= 5
    assert choice["finish_reason"] in ("stop", "length")
    assert _call(server_url + "/v1/chat/completions", request)[1]["choices"] == body["choices"]  # greedy
    sampled = {**request, "temperature": 1.0, "seed": 7}
    assert _call(server_url + "/v1/chat/completions", sampled)[1]["choices"] == \
        _call(server_url + "/v1/chat/completions", sampled)[1]["choices"]  # same seed, same sample


def test_long_prompts_are_cut_to_the_context(server_url):
    request = {"messages": [{"role": "user", "content": "word " * 600}], "max_tokens": 3, "temperature": 0}
    status, body = _call(server_url + "/v1/chat/completions", request)
    assert status == 200 and body["usage"]["prompt_tokens"] <= 256 - 3


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not JSON"),
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "user"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": -1}, "temperature"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": True}, "streaming"),
    ],
)
def test_bad_requests_get_a_400_that_says_why(server_url, body, message):
    status, answer = _call(server_url + "/v1/chat/completions", body)
    assert status == 400 and message in answer["error"]["message"]


def test_unknown_route_is_404(server_url):
    assert _call(server_url + "/v2/nothing")[0] == 404


def test_not_a_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        load_run_model(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# The server holds: bounded bodies, bounded queue, bounded max_tokens, cancelled abandoned generations,
# every field validated.

def _port(url):
    return int(url.rsplit(":", 1)[1])


def _raw(port, data, timeout=10):
    """Send raw bytes on a fresh connection; the (status, JSON body) the server answers."""
    import http.client
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read())


def _post_head(length_lines):
    return ("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + "".join(f"{line}\r\n" for line in length_lines) + "\r\n").encode()


def test_an_oversized_body_is_refused_with_413_without_being_read(server_url):
    # 50 MB announced, 10 bytes sent: an answer comes, so the server did not wait for (or read) the rest (which
    # never comes: waiting, it would not answer before the client's socket timeout raised).
    status, answer = _raw(_port(server_url), _post_head(["Content-Length: 50000000"]) + b'{"messages"')
    assert status == 413 and "limit of 1048576" in answer["error"]["message"]
    # A client asking first (Expect: 100-continue, as curl does for large bodies) is told before it uploads.
    status, answer = _raw(_port(server_url), _post_head(["Content-Length: 50000000", "Expect: 100-continue"]))
    assert status == 413 and "limit of 1048576" in answer["error"]["message"]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "Content-Length header is required"),
        (["Content-Length: abc"], "non-negative integer"),
        (["Content-Length: -5"], "non-negative integer"),
        (["Content-Length: 2", "Content-Length: 3"], "one non-negative integer"),
        (["Transfer-Encoding: chunked"], "chunked"),
    ],
    ids=["missing", "not-a-number", "negative", "two-values", "chunked"],
)
def test_a_bad_content_length_gets_a_400(server_url, lines, message):
    status, answer = _raw(_port(server_url), _post_head(lines) + b"{}")
    assert status == 400 and message in answer["error"]["message"]


def _chat(**fields):
    return {"messages": [{"role": "user", "content": "x"}], **fields}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_chat(max_tokens=True), "max_tokens"),
        (_chat(max_tokens=2.0), "max_tokens"),
        (_chat(max_tokens=256), "at most 255"),  # the tiny model's context is 256 tokens
        (_chat(temperature=True), "temperature"),
        (_chat(temperature=3), "temperature"),
        (_chat(top_p=False), "top_p"),
        (_chat(top_p=0), "top_p"),
        (_chat(top_p="1"), "top_p"),
        (_chat(seed=2**70), "seed"),
        (_chat(seed=True), "seed"),
        (_chat(seed=-1), "seed"),
        (_chat(stop=3), "stop"),
        (_chat(stop=[""]), "stop"),
        (_chat(stop=["a", "b", "c", "d", "e"]), "stop"),
        (_chat(n=2), "'n' must be 1"),
        (_chat(n=True), "'n' must be 1"),
        (_chat(stream="yes"), "stream"),
        (_chat(model=5), "model"),
        (_chat(tools=[{"type": "function"}]), "unsupported request field(s): tools"),
        (_chat(logprobs=True), "logprobs"),
        (_chat(max_tokens=4, max_completion_tokens=5), "disagree"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "text parts"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": [{}]}]}, "messages[0].tool_calls"),
        ({"messages": "hello"}, "non-empty list"),
        ([1, 2], "JSON object"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "NaN"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": 1e400}', "temperature"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_every_field_is_validated_with_a_400_that_names_it(server_url, body, message):
    status, answer = _call(server_url + "/v1/chat/completions", body)
    assert status == 400 and message in answer["error"]["message"]


def test_neutral_values_of_unsupported_fields_and_text_parts_are_accepted(server_url):
    body = _chat(max_tokens=2, temperature=0, n=1, stream=False, presence_penalty=0, logprobs=False, tools=None,
                 seed=2**63 - 1, stop=["\n\n"], max_completion_tokens=2)
    body["messages"] = [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": [{"type": "text", "text": "Hi"}], "name": "me"}]
    status, answer = _call(server_url + "/v1/chat/completions", body)
    assert status == 200 and answer["usage"]["completion_tokens"] <= 2


def test_max_tokens_is_bounded_by_the_server_and_the_flag(tmp_path, gpt2_tokenizer):
    from alignkit.cli import build_parser

    args = build_parser().parse_args(["serve", "m", "--max-tokens", "16", "--max-pending", "2"])
    assert (args.max_tokens, args.max_pending) == (16, 2)
    model = make_tiny_gpt2()
    assert ChatModel(model, gpt2_tokenizer, "t", max_tokens=10**6).max_tokens == 255  # below the context
    with _running(ChatModel(model, gpt2_tokenizer, "t", max_tokens=3)) as url:
        status, answer = _call(url + "/v1/chat/completions", _chat(max_tokens=4))
        assert status == 400 and "at most 3" in answer["error"]["message"]
        status, answer = _call(url + "/v1/chat/completions", _chat(temperature=0))  # default: 64, capped to 3
        assert status == 200 and answer["usage"]["completion_tokens"] <= 3


class _running:
    """A served ChatModel for one test: ``with _running(chat, ...) as url``."""

    def __init__(self, chat, **kwargs):
        self.server = make_server(chat, port=0, **kwargs)

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _gate(model):
    """Block every forward pass of ``model`` until the returned event is set (a model busy for as long as we like)."""
    opened = threading.Event()
    handle = model.register_forward_pre_hook(lambda module, args: opened.wait(30) and None)
    return opened, handle


def test_overload_is_answered_503_not_reset(gpt2_tokenizer):
    model = make_tiny_gpt2()
    opened, _ = _gate(model)
    results = []
    with _running(ChatModel(model, gpt2_tokenizer, "t")) as url:  # at most 8 requests pending by default
        def ask():
            try:
                results.append(_call(url + "/v1/chat/completions", _chat(max_tokens=2, temperature=0))[0])
            except Exception as err:  # noqa: BLE001 - a reset or timeout is the failure this test looks for
                results.append(repr(err))

        threads = [threading.Thread(target=ask) for _ in range(20)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 15
        while len(results) < 12 and time.monotonic() < deadline:  # the 12 over the limit are answered at once
            time.sleep(0.02)
        early = list(results)
        opened.set()
        for t in threads:
            t.join(30)
    assert early == [503] * 12
    assert sorted(results, key=str) == [200] * 8 + [503] * 12


def test_a_client_that_leaves_stops_its_generation_and_frees_the_model(gpt2_tokenizer):
    import socket

    model = make_tiny_gpt2()
    forwards = []  # one per token (and prefill): counted, not timed, so that a loaded machine cannot fail it

    def slow_token(module, args):
        forwards.append(1)
        time.sleep(0.01)  # ~100 tokens a second at most

    model.register_forward_pre_hook(slow_token)
    lines = []
    with _running(ChatModel(model, gpt2_tokenizer, "t"), log=lines.append) as url:
        body = json.dumps(_chat(max_tokens=250, temperature=0)).encode()
        with socket.create_connection(("127.0.0.1", _port(url))) as sock:
            sock.sendall(_post_head([f"Content-Length: {len(body)}"]) + body)
            time.sleep(0.3)  # generating
        deadline = time.monotonic() + 10
        while not any("cancelled" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.02)
        cancelled = [line for line in lines if "cancelled" in line]
        assert cancelled, lines
        generated = int(cancelled[0].split("cancelled after ")[1].split(" ")[0])
        assert 0 < generated < 100 and "of 250 tokens" in cancelled[0]
        # The model is free: the next request is answered without the other 250 - generated tokens being made.
        status, answer = _call(url + "/v1/chat/completions", _chat(max_tokens=2, temperature=0))
        assert status == 200 and len(forwards) < generated + 10, (len(forwards), generated)  # not 250+


def test_a_client_that_leaves_the_queue_frees_its_place(gpt2_tokenizer):
    import socket

    from alignkit.commands.serve import ServerLimits

    model = make_tiny_gpt2()
    opened, _ = _gate(model)
    lines = []
    with _running(ChatModel(model, gpt2_tokenizer, "t"), log=lines.append, limits=ServerLimits(max_pending=2)) as url:
        first = threading.Thread(target=_call, args=(url + "/v1/chat/completions", _chat(max_tokens=2)))
        first.start()  # generating, blocked by the gate
        time.sleep(0.3)
        body = json.dumps(_chat(max_tokens=2)).encode()
        with socket.create_connection(("127.0.0.1", _port(url))) as sock:  # waits for the model, then leaves
            sock.sendall(_post_head([f"Content-Length: {len(body)}"]) + body)
            time.sleep(0.3)
        deadline = time.monotonic() + 10
        while not any("cancelled after 0 of 2" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert any("cancelled after 0 of 2" in line for line in lines), lines
        second = []
        waiting = threading.Thread(target=lambda: second.append(_call(url + "/v1/chat/completions", _chat(max_tokens=2))))
        waiting.start()  # admitted to the freed place (a 503 would come back at once)
        time.sleep(0.3)
        assert second == []
        opened.set()
        first.join(30)
        waiting.join(30)
    assert second[0][0] == 200
