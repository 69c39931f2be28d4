"""`alignkit serve`: the OpenAI-compatible server over a model folder or a run folder."""

from __future__ import annotations

import json
import threading
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
