"""Rollouts from an inference server over real HTTP (`alignkit serve` in this process, on a free port), and one
step off-policy.

The server starts from other weights than the policy's, so every rollout that matches the trainer's log-probs
proves that the weights reached it. Everything is fp32 (tiny models built from configs), so a sampler's log-prob
and the trainer's recomputation of it differ only by the rounding of another batch shape (~1e-7 here).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_gpt2, single_thread
from tiny_online import PROMPTS, direct_trainer, score_e, without_timing

from alignkit.commands.serve import ChatModel, make_server
from alignkit.commands.serve_weights import WeightVersions
from alignkit.models.sampling import Sampling
from alignkit.online.anchor import FrozenAnchor
from alignkit.online.config import OnlineConfig, OnlineTrainConfig
from alignkit.online.engines import LocalEngine
from alignkit.online.kl_control import FixedKLController
from alignkit.online.rollout_config import RolloutConfig
from alignkit.online.server_engine import RolloutServerError, ServerEngine, parse_choice
from alignkit.online.tokens import token_forward
from alignkit.online.trainer import OnlineTrainer
from alignkit.peft import apply_adapter

ROUNDING = 1e-5  # fp32 log-probs of the same tokens under two batch shapes (measured ~3e-7)


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


@contextmanager
def serving(tokenizer, root: Path, *, seed: int = 5) -> Iterator[tuple[str, ChatModel]]:
    """`alignkit serve` over a tiny GPT-2 with other weights than the policy's, loading weights from ``root``."""
    chat = ChatModel(make_tiny_gpt2(seed=seed), tokenizer, "base", weights_root=root)
    server = make_server(chat, port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", chat
    finally:
        server.shutdown()
        server.server_close()


def _engine(url: str, tokenizer, root: Path, sampling: Sampling, **rollout) -> ServerEngine:
    return ServerEngine(RolloutConfig(engine="server", url=url, **rollout), tokenizer, sampling, seed=0,
                        weights_dir=root / "weights", stage="online", vocab_size=50257, eos_ids=[50256])


def _trainer(tmp_path: Path, tokenizer, url: str | None, *, steps: int = 3, policy=None, **online) -> OnlineTrainer:
    policy = policy if policy is not None else make_tiny_gpt2()
    rollout = {"rollout": {"engine": "server", "url": url}} if url and "rollout" not in online else {}
    cfg = OnlineConfig(reward="vader_sentiment", samples_per_prompt=2, max_new_tokens=5, **rollout, **online)
    train_cfg = OnlineTrainConfig(lr=1e-2, prompts_per_step=2, max_steps=steps)
    return OnlineTrainer(policy, tokenizer, score_e, cfg, train_cfg, prompts=PROMPTS, anchor=FrozenAnchor(policy),
                         controller=FixedKLController(0.1), run_dir=tmp_path / "run")


def test_server_rollouts_are_the_local_samples_and_match_the_trainers_log_probs(tmp_path, gpt2_tokenizer):
    policy = make_tiny_gpt2()
    sampling = Sampling(max_new_tokens=6, samples_per_prompt=3, batch_size=64)
    with serving(gpt2_tokenizer, tmp_path) as (url, chat):
        engine = _engine(url, gpt2_tokenizer, tmp_path, sampling)
        engine.sync(policy, 0)
        assert chat.weights.names == ["policy-online-step0"]
        remote = engine.sample(PROMPTS, range(4), step=2, weights_step=0)
    local = LocalEngine(policy, gpt2_tokenizer, sampling, seed=0).sample(PROMPTS, range(4), step=2, weights_step=0)
    # The same group seeds draw the same streams: the same tokens, whichever engine sampled them.
    assert [(c.prompt_index, c.completion_ids, c.finished) for c in remote] == \
        [(c.prompt_index, c.completion_ids, c.finished) for c in local]
    out = token_forward(policy, remote, pad_token_id=0)
    for row, c in enumerate(remote):
        assert c.sampler_logps is not None and len(c.sampler_logps) == c.num_tokens
        trainer = out.logps[row, :c.num_tokens].double()
        assert torch.allclose(torch.tensor(c.sampler_logps, dtype=torch.float64), trainer, atol=ROUNDING, rtol=0)


def test_weights_reach_the_server_after_every_update(tmp_path, gpt2_tokenizer):
    with serving(gpt2_tokenizer, tmp_path) as (url, chat):
        trainer = _trainer(tmp_path, gpt2_tokenizer, url, steps=3,
                           rollout={"engine": "server", "url": url, "max_logp_mismatch": ROUNDING})
        history = trainer.fit().history
        assert chat.weights.names == ["policy-online-step2"]  # a full reload replaces the weights served before
    for h in history:  # every step's samples came from the weights the trainer held
        assert h["sampler_logp_abs_diff"] < ROUNDING, h


def test_a_skipped_weight_sync_stops_the_run(tmp_path, gpt2_tokenizer, monkeypatch):
    def skipped(self, policy, weights_step):  # the planted mistake: the weights never reach the server
        self.synced = weights_step

    monkeypatch.setattr(ServerEngine, "sync", skipped)
    with serving(gpt2_tokenizer, tmp_path) as (url, _):
        with pytest.raises(RolloutServerError, match="404: model 'policy-online-step0' is not served here"):
            _trainer(tmp_path, gpt2_tokenizer, url).fit()


def test_a_server_that_renames_without_loading_is_caught_by_the_mismatch(tmp_path, gpt2_tokenizer, monkeypatch):
    """The planted mistake on the server's side: the new name is served, the weights stay. The version check
    passes; the logged sampler mismatch is what shows it (the test above of every step's mismatch fails)."""
    def renamed_only(self, model_name, model_path):
        self.base_name = model_name
        return "Success"

    monkeypatch.setattr(WeightVersions, "load_full", renamed_only)
    with serving(gpt2_tokenizer, tmp_path) as (url, _):
        history = _trainer(tmp_path, gpt2_tokenizer, url, steps=1).fit().history
        assert history[0]["sampler_logp_abs_diff"] > 100 * ROUNDING
        # With a bound on the mismatch, the run stops before the update: nothing is trained on those samples.
        policy = make_tiny_gpt2()
        before = [p.detach().clone() for p in policy.parameters()]
        guarded = _trainer(tmp_path / "guarded", gpt2_tokenizer, url, steps=1, policy=policy,
                           rollout={"engine": "server", "url": url, "max_logp_mismatch": 1e-4})
        with pytest.raises(ValueError, match="online.rollout.max_logp_mismatch: step 1's samples"):
            guarded.fit()
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))


def test_lora_adapters_are_loaded_under_a_new_name_every_step(tmp_path, gpt2_tokenizer):
    policy = make_tiny_gpt2()
    apply_adapter(policy, {"kind": "lora", "r": 4, "alpha": 8})
    with serving(gpt2_tokenizer, tmp_path, seed=0) as (url, chat):  # the server holds the base, as vLLM would
        history = _trainer(tmp_path, gpt2_tokenizer, url, steps=3, policy=policy).fit().history
        assert chat.weights.names == ["base", "policy-online-step0", "policy-online-step1", "policy-online-step2"]
    assert all(h["sampler_logp_abs_diff"] < ROUNDING for h in history), history
    saved = sorted(p.name for p in (tmp_path / "run" / "rollout_weights").iterdir())
    assert saved == ["step1", "step2"]  # PEFT folders the server loaded; older ones are removed


def test_a_server_that_is_gone_stops_the_run_with_one_line(tmp_path, gpt2_tokenizer):
    with serving(gpt2_tokenizer, tmp_path) as (url, _):
        pass
    with pytest.raises(RolloutServerError, match=r"did not answer: .*is it running\?") as err:
        _trainer(tmp_path, gpt2_tokenizer, url).fit()
    assert "\n" not in str(err.value)


GOOD = {"finish_reason": "length", "logprobs": {"tokens": ["token_id:5", "token_id:7"], "token_logprobs": [-1.0, -2.5]}}


@pytest.mark.parametrize(("change", "message"), [
    ({"logprobs": None}, "no logprobs.tokens"),
    ({"logprobs": {"tokens": ["he", "llo"], "token_logprobs": [-1.0, -1.0]}}, "is not 'token_id:<id>'"),
    ({"logprobs": {"tokens": ["token_id:99999"], "token_logprobs": [-1.0]}}, "below 50257"),
    ({"logprobs": {"tokens": ["token_id:5"], "token_logprobs": [-1.0, -2.0]}}, "1 tokens and 2 log-probs"),
    ({"logprobs": {"tokens": ["token_id:5"], "token_logprobs": [0.5]}}, "not a finite number <= 0"),
    ({"logprobs": {"tokens": ["token_id:5"], "token_logprobs": [None]}}, "not a finite number <= 0"),
    ({"logprobs": {"tokens": ["token_id:5"], "token_logprobs": [float("nan")]}}, "not a finite number <= 0"),
    ({"logprobs": {"tokens": ["token_id:5"], "token_logprobs": [float("-inf")]}}, "not a finite number <= 0"),
    ({"finish_reason": "stop"}, "stopped without an EOS token"),
    ({"finish_reason": "abort"}, "neither 'stop' nor 'length'"),
])
def test_malformed_choices_are_refused(change, message):
    assert parse_choice(GOOD, max_tokens=4, vocab_size=50257, eos_ids=[50256], where="s") == ([5, 7], [-1.0, -2.5], False)
    with pytest.raises(RolloutServerError, match=message):
        parse_choice({**GOOD, **change}, max_tokens=4, vocab_size=50257, eos_ids=[50256], where="s")


def test_an_answer_from_another_weights_version_is_refused(tmp_path, gpt2_tokenizer, monkeypatch):
    real = ChatModel.complete

    def stale(self, *args, **kwargs):  # a server that answers from the weights it had before
        return {**real(self, *args, **kwargs), "model": "policy-online-step0"}

    with serving(gpt2_tokenizer, tmp_path) as (url, _):
        engine = _engine(url, gpt2_tokenizer, tmp_path, Sampling(max_new_tokens=3, samples_per_prompt=2))
        engine.sync(make_tiny_gpt2(), 0)
        engine.sync(make_tiny_gpt2(seed=1), 1)
        monkeypatch.setattr(ChatModel, "complete", stale)
        with pytest.raises(RolloutServerError, match="answered with weights version 'policy-online-step0', not "
                                                     "'policy-online-step1'"):
            engine.sample(PROMPTS[:1], [0], step=1, weights_step=1)


def test_the_api_key_is_read_from_its_variable(tmp_path, gpt2_tokenizer, monkeypatch):
    monkeypatch.delenv("ROLLOUT_KEY", raising=False)
    with pytest.raises(RolloutServerError, match=r"\$ROLLOUT_KEY is not set"):
        _engine("http://127.0.0.1:9", gpt2_tokenizer, tmp_path, Sampling(), api_key_env="ROLLOUT_KEY")


# ---------------------------------------------------------------------------------------------------------
def test_staleness_0_is_exactly_the_synchronous_run(tmp_path, gpt2_tokenizer):
    sync = direct_trainer(tmp_path / "sync", gpt2_tokenizer, {}).fit()
    same = direct_trainer(tmp_path / "async0", gpt2_tokenizer, {"async": {"max_staleness": 0}}).fit()
    assert without_timing(same.history) == without_timing(sync.history)
    # The comparison sees a stale sample: one step off-policy trains on other samples from step 2 on.
    stale = direct_trainer(tmp_path / "async1", gpt2_tokenizer,
                           {"async": {"max_staleness": 1}, "rollout_correction": "tis"}).fit()
    first, *rest = without_timing(stale.history)
    assert [h["rollout_staleness"] for h in stale.history] == [0.0, 1.0, 1.0]
    # Step 1 samples from the current weights (the same samples); tis then reweighs by the rounding gap.
    assert [first[k] for k in ("reward", "kl", "length")] == [sync.history[0][k] for k in ("reward", "kl", "length")]
    assert [h["reward"] for h in rest] != [h["reward"] for h in sync.history[1:]]


def test_one_step_off_samples_from_the_previous_weights_and_corrects_for_them(tmp_path, gpt2_tokenizer):
    with serving(gpt2_tokenizer, tmp_path) as (url, chat):
        trainer = _trainer(tmp_path, gpt2_tokenizer, url, steps=3, **{"async": {"max_staleness": 1}},
                           rollout_correction={"name": "tis", "cap": 2.0})
        history = trainer.fit().history
    assert [h["rollout_staleness"] for h in history] == [0.0, 1.0, 1.0]
    assert history[0]["sampler_logp_abs_diff"] < ROUNDING  # step 1 samples the current weights
    # Later steps train on samples of the weights one update old: the mismatch is the update's size.
    assert all(h["sampler_logp_abs_diff"] > 100 * ROUNDING for h in history[1:]), history
    local = _trainer(tmp_path / "local", gpt2_tokenizer, None, steps=3, **{"async": {"max_staleness": 1}},
                     rollout_correction={"name": "tis", "cap": 2.0}).fit().history
    assert [h["reward"] for h in local] == [h["reward"] for h in history]  # the same samples either way


def test_the_api_key_never_follows_a_redirect(tmp_path, gpt2_tokenizer, monkeypatch):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str | None] = []
    asked: list[str | None] = []

    class Elsewhere(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the stdlib's name
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    elsewhere = ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)

    class Redirecting(Elsewhere):
        def do_POST(self):  # noqa: N802
            asked.append(self.headers.get("Authorization"))
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.1:{elsewhere.server_address[1]}/v1/load_weights")
            self.send_header("Content-Length", "0")
            self.end_headers()

    redirecting = ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    for server in (elsewhere, redirecting):
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.setenv("ROLLOUT_KEY", "secret")
    try:
        engine = _engine(f"http://127.0.0.1:{redirecting.server_address[1]}", gpt2_tokenizer, tmp_path, Sampling(),
                         api_key_env="ROLLOUT_KEY")
        with pytest.raises(RolloutServerError, match="answered 307"):
            engine.sync(make_tiny_gpt2(), 0)
    finally:
        for server in (elsewhere, redirecting):
            server.shutdown()
            server.server_close()
    assert asked == ["Bearer secret"] and seen == []  # the key went to the configured URL only
