"""Online training under torchrun: two processes train exactly as one, and stop together.

The worker (tests/online/online_ddp_worker.py) runs five cases through `alignkit online`'s code path, once
in one process and once in two (torchrun, gloo): RLOO (k = 2, EMA anchor, adaptive beta), REINFORCE (k = 1,
whose baseline is the mean of the whole batch), WARP (2 runs of a bottleneck adapter, merged), PPO (2 epochs
of 2 permuted minibatches per rollout, a value head, advantages whitened over both processes' tokens) and
GRPO (2 iterations per rollout, the k3 KL in the loss). Both
layouts sample the same completions (each prompt group's stream is seeded by its index in the step), so
per-step metrics and final weights must agree to float noise.

The two layouts compute log-probs in batches of other shapes, so float32 rounding differs. A completion's
log-prob is a sum of about -65 nats whose float32 spacing is 7.6e-6; the KL (policy minus anchor log-probs)
and the loss (sum_i A_i log pi(y_i) / N, whose terms cancel to ~1e-3 since the advantages of a group sum to
zero) are small differences of such sums, so they are compared with an absolute floor of that size beside
the relative tolerance of 1e-5. Rewards, lengths and distinct-n are of the sampled tokens: they agree exactly.

Weight tolerances follow tests/distributed/test_equivalence.py: Adam moves an element whose gradient is ~0 by about
+-lr whatever its size, so weights are compared by the norm of the difference (relative to the weights, and
to what training changed) and by a bound on any element well below one Adam step; the logged pre-clip
gradient norm catches a gradient off by a constant factor, which clipping and Adam would hide.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from process_group import free_port, run_ranks
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("online_ddp_worker.py")
CASES = ("rloo", "reinforce", "warp", "ppo", "grpo", "parts")
LR = 1e-3  # the worker's train.lr
STEPS = {"rloo": 3, "reinforce": 3, "warp": 2, "ppo": 2, "grpo": 2, "parts": 2}
STAGES = {"rloo": ["online"], "reinforce": ["online"], "warp": ["warp_iter0_run0", "warp_iter0_run1"],
          "ppo": ["online"], "grpo": ["online"], "parts": ["online"]}
METRIC_FOLDERS = {"online": "online", "warp_iter0_run0": "warp/iter0_run0", "warp_iter0_run1": "warp/iter0_run1"}

RTOL = 1e-5
LOSS_ATOL = 1e-6
GRAD_NORM_RTOL = 1e-4
# metric: absolute floor (see the module docstring); the relative tolerance is RTOL for all of them.
SAMPLE_METRICS = {"reward": 0.0, "length": 0.0, "finished": 0.0, "distinct_1": 0.0, "distinct_2": 0.0,
                  "kl": 2e-5, "kl_anchor": 2e-5, "penalised_reward": 1e-6, "entropy": 1e-6, "beta": 1e-9}
# PPO and GRPO's own metrics (absent from the other cases' records); the statistics of the clipped steps are
# token means of float32 log-ratios, so their floor is that of the losses.
CLIPPED_METRICS = {"approx_kl": 1e-6, "clip_fraction": 0.0, "ratio_mean": 1e-6, "policy_loss": 1e-6,
                   "value_loss": 1e-6, "value_clip_fraction": 0.0, "explained_variance": 1e-5, "token_entropy": 1e-6,
                   "k3_kl": 1e-6, "optimizer_steps": 0.0}
# Dynamic sampling's counts (the parts case's dapo preset turns it on): of the sampled rewards, so exact.
DYNAMIC_METRICS = ("dropped_groups", "uniform_groups", "extra_rounds")
WEIGHT_RTOL, UPDATE_RTOL, MAX_ABS = 1e-5, 1e-3, 0.05 * LR


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.fixture(scope="module")
def launches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The worker's cases in one process (``one``) and in two (``two``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import make_tiny_gpt2

    root = tmp_path_factory.mktemp("online_ddp")
    model = root / "tiny"
    make_tiny_gpt2(seed=0).save_pretrained(str(model))
    one, two = root / "one", root / "two"
    one.mkdir(), two.mkdir()
    _run([sys.executable, str(WORKER), "equivalence", str(one), str(model)], root)
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
          str(WORKER), "equivalence", str(two), str(model)], root)
    return {"one": one, "two": two}


def _metrics(launch: Path, case: str, stage: str) -> list[dict[str, float]]:
    lines = (launch / case / "run" / METRIC_FOLDERS[stage] / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _close_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                   init: dict[str, torch.Tensor] | None = None) -> None:
    assert a.keys() == b.keys() and a
    diff = torch.cat([(a[k].double() - b[k].double()).flatten() for k in a])
    norm = torch.cat([a[k].double().flatten() for k in a]).norm()
    assert diff.norm() <= WEIGHT_RTOL * norm, (float(diff.norm()), float(norm))
    assert diff.abs().max() <= MAX_ABS, float(diff.abs().max())
    if init is not None:
        update = torch.cat([(a[k].double() - init[k].double()).flatten() for k in a]).norm()
        assert update > 0
        assert diff.norm() <= UPDATE_RTOL * update, (float(diff.norm()), float(update))


def _part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_two_processes_log_the_same_steps_as_one(launches, case):
    for stage in STAGES[case]:
        one, two = _metrics(launches["one"], case, stage), _metrics(launches["two"], case, stage)
        # One line per step: only the main process writes.
        assert [m["step"] for m in two] == [m["step"] for m in one] == list(range(1, STEPS[case] + 1))
        for a, b in zip(one, two, strict=True):
            assert b["loss"] == pytest.approx(a["loss"], rel=RTOL, abs=LOSS_ATOL), (stage, a["step"])
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=GRAD_NORM_RTOL), (stage, a["step"])
            for key, atol in SAMPLE_METRICS.items():
                assert b[key] == pytest.approx(a[key], rel=RTOL, abs=atol), (stage, a["step"], key)
            for key, atol in CLIPPED_METRICS.items():
                assert (key in a) == (key in b), key
                if key in a:
                    assert b[key] == pytest.approx(a[key], rel=RTOL, abs=atol), (stage, a["step"], key)
            for key in DYNAMIC_METRICS:
                assert (key in a) == (key in b) == (case == "parts"), key
                assert b.get(key) == a.get(key), (stage, a["step"], key)
        assert len({round(m["reward"], 6) for m in one}) > 1 or case == "warp"  # the steps sample differently


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_two_processes_train_the_same_weights_and_anchors_as_one(launches, case):
    for stage in STAGES[case]:
        one = load_file(str(launches["one"] / case / f"rank0/{stage}.safetensors"))
        two = [load_file(str(launches["two"] / case / f"rank{r}/{stage}.safetensors")) for r in (0, 1)]
        _close_weights(_part(one, "final"), _part(two[0], "final"), init=_part(one, "init"))
        _close_weights(_part(one, "anchor"), _part(two[0], "anchor"))
        if case == "ppo":  # the value head, trained by the same optimizer steps
            _close_weights(_part(one, "value"), _part(two[0], "value"), init=None)
        # The KL beta follows is the whole batch's (a clipped adaptive step would hide a rank-local one in beta).
        torch.testing.assert_close(two[0]["kl_control"], one["kl_control"], rtol=RTOL, atol=SAMPLE_METRICS["kl"])
        for key in two[0]:  # both processes hold the same weights and the same anchor, exactly
            assert torch.equal(two[0][key], two[1][key]), (stage, key)
    model_one, model_two = (launches[k] / case / "run" / "model" for k in ("one", "two"))
    files = sorted(p.name for p in model_one.glob("*.safetensors"))
    assert files and files == sorted(p.name for p in model_two.glob("*.safetensors"))
    for name in files:  # the saved model (WARP: the merge of the two runs)
        _close_weights(load_file(str(model_one / name)), load_file(str(model_two / name)))


def test_a_non_finite_loss_or_reward_on_one_process_stops_every_process(tmp_path):
    """Rank 1's loss, then (another trainer) rank 1's reward, is NaN at step 2: both ranks raise the same
    error each time, neither hangs, no weight turns non-finite."""
    ranks = run_ranks([sys.executable, str(WORKER), "divergence", str(tmp_path)], tmp_path, _env(), timeout=180)
    assert [code for code, _ in ranks] == [0, 0], "\n".join(log for _, log in ranks)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    expected = {
        "loss": "non-finite loss at step 2 (on 1 of 2 processes, stopped before the optimizer step)",
        "reward": "non-finite reward at step 2 (nan, stopped before the update)",
    }
    for what, message in expected.items():
        first, second = results[0][what], results[1][what]
        assert first["error"] == second["error"] == "TrainingDivergedError", results
        assert first["message"] == second["message"]
        assert (first["step"], first["metric"]) == (2, what)
        assert message in first["message"]
        assert first["weights_finite"] and second["weights_finite"]
