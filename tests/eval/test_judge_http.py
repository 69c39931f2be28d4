"""The OpenAI-compatible judge end to end: a real `alignkit serve` on 127.0.0.1 answering with a tiny
GPT-2, and a deliberately faulty stdlib server for the error paths (5xx, 4xx, timeouts, malformed answers)."""

from __future__ import annotations

import email.utils
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import make_tiny_gpt2

from alignkit.commands.serve import ChatModel, make_server
from alignkit.eval.config import OpenAIJudgeConfig
from alignkit.eval.judges import InvalidVerdictsError, build_judge, judge_pairs, parse_verdict
from alignkit.eval.judges.http_deadline import MAX_RETRY_AFTER_S, retry_after_s
from alignkit.eval.judges.openai_compat import JudgeRequestError, OpenAIJudge
from alignkit.eval.winrate import win_rate_report
from alignkit.report.judge import judge_markdown, judge_report_rows
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


class _LocalServer:
    """A threading HTTP server on a free local port, serving ``url``; ``close`` stops it."""

    def _start(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = _serve(self.server)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class FaultyServer(_LocalServer):
    """A chat-completions server that answers each request by the next behaviour in a script.

    Behaviours: ``("ok", text)``, ``("status", code)``, ``("slow", seconds, text)``, ``("garbage",)``,
    ``("json", payload)`` (any JSON answer with status 200), ``("redirect", code, location)``,
    ``("retry_after", code, value)`` (an error status with a Retry-After header), ``("trickle", seconds)`` (a
    valid answer sent one byte every ``seconds``).
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
                with outer.lock:
                    outer.requests[-1]["at"] = time.monotonic()
                if step[0] == "slow":
                    time.sleep(step[1])
                    step = ("ok", step[2])
                if step[0] == "trickle":
                    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n" + b"{" * 40
                    try:
                        for i in range(len(answer)):
                            self.wfile.write(answer[i:i + 1])
                            self.wfile.flush()
                            time.sleep(step[1])
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    self.close_connection = True
                    return
                headers = {}
                if step[0] == "retry_after":
                    step, headers = ("status", step[1]), {"Retry-After": step[2]}
                if step[0] == "status":
                    data, code = b'{"error": {"message": "scripted"}}', step[1]
                elif step[0] == "json":
                    data, code = json.dumps(step[1]).encode(), 200
                elif step[0] == "redirect":
                    data, code, headers = b"", step[1], {"Location": step[2]}
                elif step[0] == "garbage":
                    data, code = b"<html>not json", 200
                else:
                    data, code = json.dumps({"choices": [{"message": {"content": step[1]}}]}).encode(), 200
                try:
                    self.send_response(code)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self._start(Handler)


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


def test_timeout_bounds_the_whole_request_not_each_read(faulty):
    server = faulty(("trickle", 1.5))  # one byte every 1.5 s: no single read ever waits 2 s
    started = time.monotonic()
    verdict = _judge(server, timeout_s=2, max_retries=0).compare("q", "a", "b")
    elapsed = time.monotonic() - started
    assert verdict.choice is None and "no complete answer within timeout_s=2 s" in verdict.error
    assert 1.9 < elapsed < 3.5


@pytest.mark.parametrize("value", ["1", "date"])
def test_retry_after_is_honoured_in_seconds_or_as_a_date(faulty, value):
    if value == "date":  # HTTP-dates have whole seconds: 2 s ahead waits between 1 and 2 s
        value = email.utils.formatdate(time.time() + 2, usegmt=True)
    server = faulty(("retry_after", 429, value), ("ok", "More helpful: A"))
    verdict = _judge(server, backoff_s=0.01).compare("q", "a", "b")
    assert verdict.choice == "A"
    waited = server.requests[1]["at"] - server.requests[0]["at"]
    assert 0.95 <= waited < 2.6


def test_a_retry_after_beyond_the_cap_fails_at_once(faulty):
    server = faulty(("retry_after", 503, str(int(MAX_RETRY_AFTER_S) + 1)), ("ok", "A"))
    started = time.monotonic()
    verdict = _judge(server).compare("q", "a", "b")
    assert verdict.choice is None and "retry after 61 s, longer than the judge waits (60 s)" in verdict.error
    assert len(server.requests) == 1 and time.monotonic() - started < 1


def test_retry_after_values():
    assert retry_after_s(None) is None and retry_after_s("soon") is None
    assert retry_after_s(" 3 ") == 3.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0


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


# ---------------------------------------------------------------------------------------------------------
# A judge that cannot answer fails the evaluation; it never passes for a 0.500 win rate.

def _refused_url():
    """A URL on 127.0.0.1 where nothing listens (a port bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def tiny_policy(gpt2_tokenizer):
    return make_tiny_gpt2(), gpt2_tokenizer


def _judge_run(url, tiny_policy, **judge):
    from alignkit.eval.config import EvalConfig
    from alignkit.eval.heldout import BaselineSources, judge_run

    model, tokenizer = tiny_policy
    cfg = EvalConfig(num_prompts=2, max_new_tokens=3, batch_size=2, baselines=["chosen"], judge=OpenAIJudgeConfig(
        kind="openai", base_url=url, model="m", api_key_env=None, cache=False, backoff_s=0.01,
        **{"max_retries": 1, "timeout_s": 5, **judge}))
    chosen = dict(zip(PROMPTS, BASELINE, strict=True))
    return judge_run(cfg, model, tokenizer, PROMPTS, BaselineSources(chosen=chosen))["baselines"][0]


@pytest.mark.parametrize(
    ("behaviour", "extra", "why"),
    [
        (("status", 500), {}, "HTTP 500"),
        (None, {}, "ConnectionRefusedError"),
        (("slow", 1.0, "A"), {"timeout_s": 0.2, "max_retries": 0}, "timed out"),
        (("json", {"object": "list", "data": []}), {}, "not a chat completion"),
        (("json", {"choices": [{"message": {"content": 7}}]}), {}, "not a chat completion"),
        (("ok", "Both are fine."), {}, "unparseable verdict"),
    ],
    ids=["500", "refused", "hangs", "not-a-completion", "content-not-text", "no-verdict"],
)
def test_a_judge_that_cannot_answer_fails_the_evaluation(faulty, tiny_policy, behaviour, extra, why):
    url = faulty(behaviour).url if behaviour else _refused_url()
    with pytest.raises(ValueError, match="4 of 4 judge verdicts are invalid") as caught:
        _judge_run(url, tiny_policy, **extra)
    assert isinstance(caught.value, InvalidVerdictsError)  # a ValueError: the CLI prints it and exits 2
    assert why in str(caught.value) and "none is valid" in str(caught.value)
    assert caught.value.invalid == caught.value.total == 4


def test_no_valid_verdict_fails_even_when_every_invalid_one_is_tolerated(faulty, tiny_policy):
    server = faulty(("status", 503))
    with pytest.raises(InvalidVerdictsError, match="none is valid"):
        _judge_run(server.url, tiny_policy, max_invalid_fraction=1.0, max_retries=0)
    with pytest.raises(ValueError, match="none of the 4 verdicts is valid"):
        win_rate_report([0.5, 0.5], [1, 1], [1, 1], invalid_verdicts=4)


def test_invalid_verdicts_within_the_limit_are_reported_beyond_it_fail(faulty, tiny_policy):
    # One request in four answers 500 (not retried): 25% invalid.
    script = (("ok", "More helpful: A"), ("status", 500), ("ok", "More helpful: A"), ("ok", "More helpful: B"))
    section = _judge_run(faulty(*script).url, tiny_policy, max_concurrency=1, max_retries=0,
                         max_invalid_fraction=0.25)
    assert section["invalid_verdicts"] == 1 and section["n"] == 2
    assert "| invalid verdicts (counted as ties) | 1 of 4 |" in judge_markdown({"judge": section})
    # Past the limit after the second verdict, the last two are not asked.
    with pytest.raises(InvalidVerdictsError, match=r"3 of 4 judge verdicts are invalid \(2 of them not asked.*HTTP 500"):
        _judge_run(faulty(*script).url, tiny_policy, max_concurrency=1, max_retries=0, max_invalid_fraction=0.2)


def test_once_the_limit_is_passed_the_rest_is_not_asked(faulty):
    server = faulty(("status", 500))
    judge = _judge(server, max_retries=0, max_concurrency=1, max_invalid_fraction=0.5)
    with pytest.raises(InvalidVerdictsError, match=r"20 of 20 .*9 of them not asked.*First error: .*HTTP 500"):
        judge_pairs(judge, [f"q{i}" for i in range(10)], ["a"] * 10, ["b"] * 10, max_invalid_fraction=0.5)
    assert len(server.requests) == 11  # the 11th invalid verdict of 20 decided it


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_max_invalid_fraction_is_a_fraction(value):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="max_invalid_fraction"):
        OpenAIJudgeConfig(kind="openai", base_url="http://x/v1", model="m", max_invalid_fraction=value)


def _always_a_gpt2(tokenizer):
    """A tiny GPT-2 whose next token is "A" whatever it reads: ln_f outputs a constant that only A's
    (output) embedding points along."""
    import torch

    model = make_tiny_gpt2()
    (a_id,) = tokenizer.encode("A")
    with torch.no_grad():
        direction = torch.zeros(model.config.n_embd)
        direction[0] = 1.0
        model.transformer.wte.weight[a_id] = 10 * direction  # tied with lm_head: logit(A) = 10, the rest ~0.02
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(direction)
    return model


def test_a_served_judge_that_always_answers_a_is_flagged(tiny_policy, tmp_path):
    from alignkit.eval.agreement import LabelledPair
    from alignkit.eval.config import EvalConfig
    from alignkit.eval.heldout import BaselineSources, judge_run
    from alignkit.models.kl import as_reference

    model, tokenizer = tiny_policy
    server = make_server(ChatModel(_always_a_gpt2(tokenizer), tokenizer, "always-a"), port=0)
    try:
        cfg = EvalConfig(num_prompts=2, max_new_tokens=3, batch_size=2, baselines=["chosen", "base"],
                         judge=OpenAIJudgeConfig(kind="openai", base_url=_serve(server), model="always-a",
                                                 api_key_env=None, max_tokens=1, cache=False))
        labelled = [LabelledPair(p, good, bad) for p, good, bad in zip(PROMPTS, POLICY, BASELINE, strict=True)]
        sources = BaselineSources(base=as_reference(make_tiny_gpt2(seed=2)),
                                  chosen=dict(zip(PROMPTS, BASELINE, strict=True)))
        evaluation = judge_run(cfg, model, tokenizer, PROMPTS, sources, labelled=labelled)
    finally:
        server.shutdown()
        server.server_close()
    assert [s["baseline"] for s in evaluation["baselines"]] == ["chosen", "base"]
    assert all(s["win_rate"]["estimate"] == 0.5 and s["ties"] == 2 for s in evaluation["baselines"])
    assert evaluation["agreement"]["n"] == 2 and evaluation["agreement"]["agreement"]["estimate"] == 0.5
    bias = evaluation["position_bias"]
    assert (bias["pairs"], bias["flip_rate"], bias["first_position_rate"], bias["most_common"]) == (6, 1.0, 1.0, "A")
    assert ["near-constant" in w or "position-biased" in w or "chance" in w for w in evaluation["warnings"]] == [True] * 3


def test_a_judge_that_always_answers_a_is_flagged_and_agrees_at_chance(faulty, tiny_policy):
    from alignkit.eval.agreement import LabelledPair
    from alignkit.eval.config import EvalConfig
    from alignkit.eval.heldout import BaselineSources, judge_run

    model, tokenizer = tiny_policy
    server = faulty(("ok", "Comparison: both are fine.\nMore helpful: A"))
    cfg = EvalConfig(num_prompts=2, max_new_tokens=3, batch_size=2, baselines=["chosen"], judge=OpenAIJudgeConfig(
        kind="openai", base_url=server.url, model="m", api_key_env=None, cache=False))
    labelled = [LabelledPair(p, good, bad) for p, good, bad in zip(PROMPTS, POLICY, BASELINE, strict=True)]
    evaluation = judge_run(cfg, model, tokenizer, PROMPTS, BaselineSources(chosen=dict(zip(PROMPTS, BASELINE, strict=True))),
                           labelled=labelled)
    assert evaluation["agreement"]["agreement"] == {"estimate": 0.5, "low": 0.5, "high": 0.5}
    bias = evaluation["position_bias"]
    assert (bias["flip_rate"], bias["first_position_rate"], bias["same_verdict_rate"], bias["pairs"]) == (1, 1, 1, 4)
    warnings = evaluation["warnings"]
    assert len(warnings) == 3
    assert "near-constant" in warnings[0] and "position-biased" in warnings[1] and "chance" in warnings[2]
    assert evaluation["baselines"][0]["win_rate"]["estimate"] == 0.5
    assert "The judge prompt" not in server.requests[0]["body"]["messages"][1]["content"]
    assert "which response is more helpful and harmless" in server.requests[0]["body"]["messages"][1]["content"]
    markdown = judge_markdown({"judged": [evaluation]})
    assert markdown.count("> **Warning:**") == 3


def test_a_report_without_a_win_rate_shows_none():
    section = {"judge": {"name": "openai"}, "baseline": "reference", "win_rate": None, "wins": 0, "ties": 0,
               "losses": 0, "n": 2, "invalid_verdicts": 4,
               "length": {"unit": "tokens", "baseline_mean": 1.0, "policy_mean": 1.0}}
    assert judge_report_rows({"judge": section})[0][2] == "none (no valid verdict)"


# ---------------------------------------------------------------------------------------------------------
# Keys stay home: no redirect is followed, and a key is never accepted as api_key_env.

class RecordingServer(_LocalServer):
    """Answers any request with a chat completion and records the method, path and headers it got."""

    def __init__(self):
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
                data = json.dumps({"choices": [{"message": {"content": "More helpful: A"}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer  # noqa: N815 - the stdlib's names

        self._start(Handler)


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_is_refused_and_the_key_never_reaches_the_other_server(faulty, monkeypatch, code):
    monkeypatch.setenv("AK_KEY", "sk-do-not-leak")
    elsewhere = RecordingServer()
    try:
        server = faulty(("redirect", code, elsewhere.url + "/chat/completions"))
        judge = _judge(server, api_key_env="AK_KEY")
        with pytest.raises(JudgeRequestError, match=rf"redirected \(HTTP {code}\) to another address"):
            judge.compare("q", "a", "b")
        with pytest.raises(JudgeRequestError, match="redirected"):  # and it stops the whole evaluation
            judge_pairs(judge, PROMPTS, POLICY, BASELINE, max_invalid_fraction=1.0)
    finally:
        elsewhere.close()
    assert server.requests[0]["auth"] == "Bearer sk-do-not-leak"  # the configured server did get the key
    assert elsewhere.requests == []  # the other one got nothing at all, the key least of all


def test_the_recording_server_does_see_a_key_sent_to_it(monkeypatch):
    """The leak test above can fail: the recording server sees the Authorization header when one comes."""
    monkeypatch.setenv("AK_KEY", "sk-123")
    elsewhere = RecordingServer()
    try:
        assert OpenAIJudge(elsewhere.url, "m", api_key_env="AK_KEY").compare("q", "a", "b").choice == "A"
    finally:
        elsewhere.close()
    assert elsewhere.requests[0]["headers"]["Authorization"] == "Bearer sk-123"


KEY_LIKE = [
    "sk-proj-Xy7Qa9Lm2Np4Rs6Tu8Vw0",
    "sk-ant-api03-abcdefghijklmnop",
    "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345",
    "my judge key",
    "0123456789abcdef0123456789abcdef",
    "QWJjZGVmZ2hpams3ODkwMTIzNDU2Nzg5",
]


@pytest.mark.parametrize("value", KEY_LIKE)
def test_a_key_in_api_key_env_is_refused_without_being_shown(value, tmp_path):
    from pydantic import ValidationError

    from alignkit.recipe import RecipeError, load_recipe

    with pytest.raises(ValueError, match="NAME of the environment variable") as caught:
        OpenAIJudge("http://127.0.0.1:1/v1", "m", api_key_env=value)
    assert value not in str(caught.value)
    with pytest.raises(ValidationError) as invalid:
        OpenAIJudgeConfig(kind="openai", base_url="http://127.0.0.1:1/v1", model="m", api_key_env=value)
    assert value not in str(invalid.value) and "NAME of the environment variable" in str(invalid.value)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text((Path(__file__).resolve().parents[2] / "recipes" / "dpo_gpt2_hh.yaml").read_text())
    overrides = ["eval.judge.kind=openai", "eval.judge.base_url=http://127.0.0.1:1/v1", "eval.judge.model=m",
                 f"eval.judge.api_key_env={value}"]
    with pytest.raises(RecipeError, match="api_key_env") as refused:
        load_recipe(recipe, overrides)
    assert value not in str(refused.value)


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "AZURE_OPENAI_API_KEY_2", "my_judge_token", "HF_TOKEN"])
def test_variable_names_are_accepted(name):
    assert OpenAIJudgeConfig(kind="openai", base_url="http://x/v1", model="m", api_key_env=name).api_key_env == name


def test_alignkit_eval_exits_2_and_writes_no_win_rate_when_the_judge_is_down(faulty, tmp_path, hh_path,
                                                                            gpt2_tokenizer, capsys):
    from alignkit.cli import main

    run = tmp_path / "run"
    make_tiny_gpt2().save_pretrained(run / "model")
    gpt2_tokenizer.save_pretrained(run / "model")
    (run / "recipe.yaml").write_text((Path(__file__).resolve().parents[2] / "recipes" / "dpo_gpt2_hh.yaml").read_text())
    server = faulty(("status", 500))
    code = main(["eval", str(run), f"model.name_or_path={run / 'model'}", f"data.source.path={hh_path}",
                 f"data.test_source.path={hh_path}", "eval.num_prompts=2", "eval.max_new_tokens=3",
                 "eval.baselines=[chosen]", "eval.judge.kind=openai",
                 f"eval.judge.base_url={server.url}", "eval.judge.model=m", "eval.judge.api_key_env=null",
                 "eval.judge.cache=false", "eval.judge.max_retries=0", "--device", "cpu"])
    assert code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "4 of 4 judge verdicts are invalid" in err and "HTTP 500" in err
    assert not (run / "report.json").exists() or "judged" not in json.loads((run / "report.json").read_text())
