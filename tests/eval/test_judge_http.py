"""The OpenAI-compatible judge end to end: a real `alignkit serve` on 127.0.0.1 answering with a tiny
GPT-2, and a deliberately faulty stdlib server for the error paths (5xx, 4xx, timeouts, malformed answers)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import make_tiny_gpt2

from alignkit.commands.serve import ChatModel, make_server
from alignkit.eval.config import OpenAIJudgeConfig
from alignkit.eval.judges import build_judge, judge_pairs, parse_verdict
from alignkit.eval.judges.openai_compat import JudgeRequestError, OpenAIJudge
from alignkit.workflow.model_io import load_run_model

PROMPTS = ["How do I boil an egg?", "Name a colour."]
POLICY = ["Put it in boiling water for eight minutes.", "Blue."]
BASELINE = ["Eggs are nice.", "I cannot help with that."]


def _serve(server):
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


@pytest.fixture(scope="module")
def served_tiny_gpt2(tmp_path_factory, gpt2_tokenizer):
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    make_tiny_gpt2().save_pretrained(folder)
    gpt2_tokenizer.save_pretrained(folder)
    model, tokenizer = load_run_model(folder)
    server = make_server(ChatModel(model, tokenizer, "tiny-gpt2"), port=0)
    yield _serve(server)
    server.shutdown()
    server.server_close()


def test_judge_against_a_real_served_model_and_the_cache(served_tiny_gpt2, tmp_path):
    judge = OpenAIJudge(served_tiny_gpt2, "tiny-gpt2", api_key_env=None, max_tokens=4, max_concurrency=2,
                        cache_path=tmp_path / "verdicts.jsonl", timeout_s=30)
    pairs = judge_pairs(judge, PROMPTS, POLICY, BASELINE)
    assert judge.requests_sent == 4  # 2 pairs x 2 orders
    for pair in pairs:
        for verdict in (pair.policy_first, pair.policy_second):
            # A random model answers noise: the verdict is whatever the parser reads, or counted invalid.
            assert verdict.choice == parse_verdict(verdict.raw)
            assert (verdict.error is None) == verdict.valid
            assert not verdict.cached
        assert pair.score in (0.0, 0.5, 1.0)
    assert len(judge.cache) == 4

    again = OpenAIJudge(served_tiny_gpt2, "tiny-gpt2", api_key_env=None, max_tokens=4,
                        cache_path=tmp_path / "verdicts.jsonl")
    rerun = judge_pairs(again, PROMPTS, POLICY, BASELINE)
    assert again.requests_sent == 0  # a rerun costs nothing
    assert [p.score for p in rerun] == [p.score for p in pairs]
    assert all(p.policy_first.cached and p.policy_second.cached for p in rerun)


def test_build_judge_from_config_reads_the_key_from_the_environment(served_tiny_gpt2, tmp_path, monkeypatch):
    cfg = OpenAIJudgeConfig(kind="openai", base_url=served_tiny_gpt2, model="tiny-gpt2", api_key_env="AK_TEST_KEY",
                            max_tokens=2)
    with pytest.raises(JudgeRequestError, match="AK_TEST_KEY"):
        build_judge(cfg, cache_dir=tmp_path)
    monkeypatch.setenv("AK_TEST_KEY", "sk-secret-value")
    judge = build_judge(cfg, cache_dir=tmp_path)
    assert judge.compare("Hi?", "Hello!", "Go away.").raw is not None
    assert "sk-secret-value" not in repr(judge) + json.dumps(judge.describe())
    assert "sk-secret-value" not in (tmp_path / "verdicts.jsonl").read_text()


class FaultyServer:
    """A chat-completions server that answers each request by the next behaviour in a script.

    Behaviours: ``("ok", text)``, ``("status", code)``, ``("slow", seconds, text)``, ``("garbage",)``.
    After the script runs out it keeps answering with the last behaviour.
    """

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append({"body": body, "auth": self.headers.get("Authorization")})
                    step = outer.script.pop(0) if len(outer.script) > 1 else outer.script[0]
                if step[0] == "slow":
                    time.sleep(step[1])
                    step = ("ok", step[2])
                if step[0] == "status":
                    data, code = b'{"error": {"message": "scripted"}}', step[1]
                elif step[0] == "garbage":
                    data, code = b"<html>not json", 200
                else:
                    data, code = json.dumps({"choices": [{"message": {"content": step[1]}}]}).encode(), 200
                try:
                    self.send_response(code)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = _serve(self.server)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def faulty():
    servers = []

    def make(*script):
        servers.append(FaultyServer(script))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _judge(server, **kw):
    kw = {"api_key_env": None, "backoff_s": 0.01, "max_retries": 3, "timeout_s": 5, **kw}
    return OpenAIJudge(server.url, "m", **kw)


def test_5xx_is_retried_with_backoff_then_succeeds(faulty):
    server = faulty(("status", 503), ("status", 500), ("ok", "Comparison: same.\nMore helpful: B"))
    judge = _judge(server, backoff_s=0.05)
    started = time.perf_counter()
    verdict = judge.compare("q", "a", "b")
    assert verdict.choice == "B" and verdict.error is None
    assert len(server.requests) == 3 and judge.requests_sent == 3
    assert time.perf_counter() - started >= 0.05 + 0.1  # backoff 0.05 then 0.1


def test_persistent_5xx_gives_an_invalid_verdict_after_the_retries(faulty):
    server = faulty(("status", 502))
    verdict = _judge(server, max_retries=2).compare("q", "a", "b")
    assert verdict.choice is None and "3 attempts" in verdict.error and "502" in verdict.error
    assert len(server.requests) == 3


def test_4xx_is_not_retried_and_stops_the_evaluation(faulty):
    server = faulty(("status", 401))
    with pytest.raises(JudgeRequestError, match="HTTP 401"):
        _judge(server).compare("q", "a", "b")
    assert len(server.requests) == 1


def test_timeout_is_retried_and_a_slow_answer_within_the_timeout_is_kept(faulty):
    server = faulty(("slow", 1.0, "A"), ("slow", 0.05, "A"))
    verdict = _judge(server, timeout_s=0.3).compare("q", "a", "b")
    assert verdict.choice == "A"
    assert len(server.requests) == 2


def test_malformed_answers(faulty):
    server = faulty(("garbage",), ("ok", "Both responses are fine, hard to say."))
    judge = _judge(server)
    verdict = judge.compare("q", "a", "b")  # not JSON: retried, then a text without a verdict
    assert verdict.choice is None and verdict.error == "unparseable verdict"
    assert verdict.raw == "Both responses are fine, hard to say."
    assert len(server.requests) == 2


def test_requests_carry_the_prompt_key_and_settings(faulty, monkeypatch):
    monkeypatch.setenv("AK_KEY", "sk-123")
    server = faulty(("ok", "A"))
    judge = _judge(server, api_key_env="AK_KEY", max_tokens=7, max_concurrency=3)
    verdicts = judge.compare_many([("q1", "x", "y"), ("q2", "y", "x"), ("q3", "u", "v")])
    assert [v.choice for v in verdicts] == ["A", "A", "A"]
    assert {r["auth"] for r in server.requests} == {"Bearer sk-123"}
    body = server.requests[0]["body"]
    assert body["model"] == "m" and body["max_tokens"] == 7 and body["temperature"] == 0.0
    user = body["messages"][-1]["content"]
    assert "Response A:" in user and "Response B:" in user and "more helpful" in user


@pytest.mark.parametrize(
    ("text", "choice"),
    [
        ("Comparison: A is vague.\nMore helpful: B", "B"),
        ("More helpful: \"A\"", "A"),
        ("Answer: **B**", "B"),
        ("B", "B"),
        ("(A).", "A"),
        ("Response A is clearly better.", "A"),
        ("A good question. Both are poor.", None),
        ("Response A and Response B are equal.", None),
        ("", None),
    ],
)
def test_parse_verdict(text, choice):
    assert parse_verdict(text) == choice
