"""`alignkit serve`'s side of the rollout contract: /v1/completions with token ids and sampled-token log-probs,
LoRA adapters and full weights loaded under new names, the answering version in every answer."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
import torch
from conftest import make_tiny_gpt2
from safetensors.torch import load_file, save_file

from alignkit.commands.serve import ChatModel, make_server
from alignkit.peft import apply_adapter, export_peft_lora


@pytest.fixture
def served(tmp_path, gpt2_tokenizer):
    chat = ChatModel(make_tiny_gpt2(), gpt2_tokenizer, "base", weights_root=tmp_path / "weights")
    (tmp_path / "weights").mkdir()
    server = make_server(chat, port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", chat, tmp_path / "weights"
    server.shutdown()
    server.server_close()


def _post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _complete(url, **fields):
    body = {"prompt": [464, 3290], "max_tokens": 4, "n": 3, "seed": 7, "logprobs": 0,
            "return_tokens_as_token_ids": True, **fields}
    return _post(f"{url}/completions", body)


def test_completions_return_token_ids_and_log_probs_of_the_sampled_tokens(served):
    url, chat, _ = served
    status, body = _complete(url, return_token_ids=True)
    assert status == 200 and body["object"] == "text_completion" and body["model"] == "base"
    assert len(body["choices"]) == 3 and body["usage"]["prompt_tokens"] == 2
    for choice in body["choices"]:
        lp = choice["logprobs"]
        ids = [int(t.removeprefix("token_id:")) for t in lp["tokens"]]
        assert ids == choice["token_ids"] and len(lp["token_logprobs"]) == len(ids) <= 4
        # The sampler's log-prob of each token is the model's own (temperature 1), recomputed here.
        with torch.no_grad():
            logits = chat.model(torch.tensor([[464, 3290, *ids]])).logits[0, 1:-1].log_softmax(-1)
        expected = logits[torch.arange(len(ids)), torch.tensor(ids)]
        assert torch.allclose(torch.tensor(lp["token_logprobs"]), expected, atol=1e-5)
    again = _complete(url, return_token_ids=True)[1]
    assert [c["token_ids"] for c in again["choices"]] == [c["token_ids"] for c in body["choices"]]  # seeded
    text = _complete(url, return_tokens_as_token_ids=False, prompt="Hello")[1]["choices"][0]["logprobs"]["tokens"]
    assert not any(t.startswith("token_id:") for t in text)


@pytest.mark.parametrize(("fields", "status", "message"), [
    ({"prompt": ""}, 400, "'prompt'"),
    ({"prompt": [464, 50257]}, 400, "'prompt'"),
    ({"prompt": [[464], [3290]]}, 400, "'prompt'"),
    ({"n": 0}, 400, "'n'"),
    ({"n": 65}, 400, "'n'"),
    ({"logprobs": 5}, 400, "'logprobs'"),
    ({"logprobs": True}, 400, "'logprobs'"),
    ({"stop": ["x"]}, 400, "stop"),
    ({"echo": True}, 400, "echo"),
    ({"seed": -1}, 400, "'seed'"),
    ({"return_tokens_as_token_ids": 1}, 400, "'return_tokens_as_token_ids'"),
    ({"prompt": [464] * 254}, 400, "context of 256 tokens"),
    ({"model": "nope"}, 404, "'nope' is not served here; served: base"),
])
def test_bad_completion_requests_are_refused_naming_the_field(served, fields, status, message):
    code, body = _complete(served[0], **fields)
    assert code == status and message in body["error"]["message"], body


def _lora_folder(folder, *, seed: int, scale: float = 0.5):
    model = make_tiny_gpt2()
    apply_adapter(model, {"kind": "lora", "r": 2, "alpha": 4})
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * scale)
    return export_peft_lora(model, folder, "tiny")


def _first_logps(url, model):
    status, body = _complete(url, model=model, n=1, temperature=0)
    assert status == 200 and body["model"] == model, body
    return body["choices"][0]["logprobs"]["token_logprobs"]


def test_lora_adapters_load_under_new_names_and_each_answers_as_itself(served):
    url, chat, root = served
    base = _first_logps(url, "base")
    for name, seed in (("v1", 1), ("v2", 2)):
        status, body = _post(f"{url}/load_lora_adapter", {"lora_name": name, "lora_path": str(_lora_folder(root / name, seed=seed))})
        assert status == 200, body
    status, listing = 200, json.loads(urllib.request.urlopen(f"{url}/models", timeout=10).read())
    assert [m["id"] for m in listing["data"]] == ["base", "v1", "v2"]
    v1, v2 = _first_logps(url, "v1"), _first_logps(url, "v2")
    assert v1 != base and v2 != v1
    assert _first_logps(url, "base") == base and _first_logps(url, "v1") == v1  # switching back is exact
    code, body = _post(f"{url}/load_lora_adapter", {"lora_name": "v1", "lora_path": str(root / "v1")})
    assert code == 400 and "already loaded" in body["error"]["message"]


def test_weight_loading_is_bounded_to_its_folder_and_checked_before_anything_changes(served, tmp_path):
    url, chat, root = served
    base = _first_logps(url, "base")
    outside = _lora_folder(tmp_path / "outside", seed=1)
    (root / "link").symlink_to(outside)
    bad = _lora_folder(root / "nan", seed=1)
    tensors = load_file(str(bad / "adapter_model.safetensors"))
    next(iter(tensors.values()))[0, 0] = float("nan")
    save_file(tensors, str(bad / "adapter_model.safetensors"))
    (root / "empty").mkdir()
    (root / "deep").mkdir()
    (root / "deep" / "adapter_config.json").write_text("[" * 20_000 + "]" * 20_000)
    (root / "inf").mkdir()
    (root / "inf" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2, "lora_alpha": Infinity}')
    cases = [
        ({"lora_name": "a", "lora_path": str(outside)}, "outside the folder"),
        ({"lora_name": "a", "lora_path": str(root / "link")}, "outside the folder"),
        ({"lora_name": "a", "lora_path": str(root / "missing")}, "is not a folder"),
        ({"lora_name": "a", "lora_path": str(root / "empty")}, "adapter_config.json: missing"),
        ({"lora_name": "a", "lora_path": str(root / "deep")}, "adapter_config.json: not JSON: JSON nested too deeply"),
        ({"lora_name": "a", "lora_path": str(root / "inf")}, "adapter_config.json: not JSON: Infinity is not a JSON"),
        ({"lora_name": "a", "lora_path": str(bad)}, "NaN or Inf"),
        ({"lora_name": "", "lora_path": str(bad)}, "'lora_name'"),
        ({"lora_name": "a", "lora_path": 3}, "'lora_path'"),
        ({"lora_name": "a", "lora_path": str(bad), "extra": 1}, "unsupported request field(s): extra"),
    ]
    for body, message in cases:
        code, answer = _post(f"{url}/load_lora_adapter", body)
        assert code == 400 and message in answer["error"]["message"], (body, answer)
    assert _first_logps(url, "base") == base and chat.weights.names == ["base"]


def test_full_weights_replace_the_served_ones_under_a_new_name(served):
    url, chat, root = served
    other = make_tiny_gpt2(seed=3)
    (root / "w").mkdir()
    save_file({n: p.detach().contiguous() for n, p in other.named_parameters()}, str(root / "w" / "model.safetensors"))
    code, body = _post(f"{url}/load_weights", {"model_name": "step1", "model_path": str(root / "w")})
    assert code == 200, body
    code, body = _complete(url, model="base")
    assert code == 404 and "served: step1" in body["error"]["message"]
    with torch.no_grad():
        ids = _complete(url, model="step1", n=1, temperature=0, return_token_ids=True)[1]["choices"][0]["token_ids"]
        logits = other(torch.tensor([[464, 3290, *ids]])).logits[0, 1:-1].log_softmax(-1)
    assert torch.allclose(torch.tensor(_first_logps(url, "step1")), logits[torch.arange(len(ids)), torch.tensor(ids)],
                          atol=1e-5)
    (root / "short").mkdir()
    save_file({"transformer.wte.weight": torch.zeros(3, 3)}, str(root / "short" / "model.safetensors"))
    code, body = _post(f"{url}/load_weights", {"model_name": "x", "model_path": str(root / "short")})
    assert code == 400 and "transformer.wte.weight has shape (3, 3)" in body["error"]["message"]


def test_loading_is_refused_unless_the_server_allows_a_folder(gpt2_tokenizer, tmp_path):
    chat = ChatModel(make_tiny_gpt2(), gpt2_tokenizer, "base")
    server = make_server(chat, port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        code, body = _post(f"http://127.0.0.1:{server.server_address[1]}/v1/load_lora_adapter",
                           {"lora_name": "a", "lora_path": str(tmp_path)})
    finally:
        server.shutdown()
        server.server_close()
    assert code == 403 and "--allow-weights-from" in body["error"]["message"]


def test_a_weights_folder_that_is_not_one_is_a_one_line_error(tmp_path, capfd):
    from alignkit.cli import main

    assert main(["serve", str(tmp_path), "--allow-weights-from", str(tmp_path / "nope")]) == 2
    err = " ".join(capfd.readouterr().err.split())
    assert "--allow-weights-from:" in err and "is not a folder" in err and "Traceback" not in err, err
