"""An online step's time, split into sampling and training: the local decoding loop against an inference server
(`alignkit serve` as a second process, weights pushed over HTTP after every update), each synchronous and one
step off-policy (``online.async.max_staleness: 1``).

The model is a small random GPT-2 (4 layers, width 256, GPT-2's vocabulary; built from a config, nothing is
downloaded), trained by RLOO on sentiment prompts: 4 prompts x 4 samples of 32 tokens a step, 6 steps. The trainer
runs torch on one thread and the server on one thread (``OMP_NUM_THREADS=1``), so that on a 2-core machine the two
processes (or, locally one step off, the sampling and the training threads) each have a core.

Per step (the first step left out: it warms up, and one step off samples it synchronously), what the training
thread waits for:

- sampling: the rollout (``generation``; one step off, the wait for the rollout sampled in the background);
- weight sync: saving the weights and the server's load (server only);
- training: the rest of the step (rewards, log-probs, the update).

Ratios are against the local synchronous step of the same run.

Usage::

    nice -n 10 python benchmarks/online_rollout.py                      # print the table
    nice -n 10 python benchmarks/online_rollout.py --write benchmarks/RESULTS_online_rollout.md
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dpo_bench_setup import machine_summary  # noqa: E402

from alignkit.data.sentiment_prompts import sentiment_prompts  # noqa: E402
from alignkit.models.gpt2_tokenizer import offline_gpt2_tokenizer  # noqa: E402
from alignkit.online.anchor import FrozenAnchor  # noqa: E402
from alignkit.online.config import OnlineConfig, OnlineTrainConfig  # noqa: E402
from alignkit.online.kl_control import FixedKLController  # noqa: E402
from alignkit.online.trainer import OnlineTrainer  # noqa: E402
from alignkit.timing import PhaseClock, recording  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6
SAMPLING = ("generation", "rollout wait")


def small_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_embd=256, n_layer=4, n_head=4, n_positions=256)).eval()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(model: Path, weights_root: Path) -> Iterator[str]:
    """`alignkit serve` over ``model`` as a second process, on one thread; its URL once it answers."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from alignkit.cli import main; sys.exit(main())",
                             "serve", str(model), "--port", str(port), "--quiet", "--allow-weights-from",
                             str(weights_root)], env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"alignkit serve exited with {proc.returncode}") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run(engine: str, staleness: int, folder: Path, url: str | None, *, policy=None, steps: int = STEPS,
        new_tokens: int = 32) -> dict[str, float]:
    """Mean seconds per step (after the first) of sampling, weight sync, training and the whole step."""
    tokenizer = offline_gpt2_tokenizer()
    policy = policy if policy is not None else small_gpt2()
    online = {"reward": "vader_sentiment", "samples_per_prompt": 4, "max_new_tokens": new_tokens, "beta": 0.05,
              "generation_batch_size": 16}
    if engine == "server":
        online["rollout"] = {"engine": "server", "url": url}
    if staleness:
        online.update({"async": {"max_staleness": 1}, "rollout_correction": "tis"})
    from alignkit.models.rewards import resolve_reward

    _, reward = resolve_reward("vader_sentiment", timeout_s=300)
    trainer = OnlineTrainer(policy, tokenizer, lambda prompts, texts: reward(texts), OnlineConfig(**online),
                            OnlineTrainConfig(lr=1e-4, prompts_per_step=4, max_steps=steps),
                            prompts=sentiment_prompts(32, seed=0), anchor=FrozenAnchor(policy),
                            controller=FixedKLController(0.05), run_dir=folder / f"{engine}{staleness}")
    steps: list[dict[str, float]] = []
    step = trainer.train_step

    def timed(i: int) -> dict[str, float]:
        clock = PhaseClock()
        with recording(clock):
            metrics = step(i)
        top = {path[0]: total.seconds for path, total in clock.totals.items() if len(path) == 1}
        sampling = sum(top.get(name, 0.0) for name in SAMPLING)
        sync = top.get("weight sync", 0.0)
        steps.append({"step": metrics["step_seconds"], "sampling": sampling, "sync": sync,
                      "training": metrics["step_seconds"] - sampling - sync})
        return metrics

    trainer.train_step = timed  # type: ignore[method-assign]
    trainer.fit()
    return {key: statistics.mean(s[key] for s in steps[1:]) for key in ("step", "sampling", "sync", "training")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="write the results as Markdown here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        small_gpt2(seed=1).save_pretrained(folder / "served")  # other weights: the first sync replaces them
        offline_gpt2_tokenizer().save_pretrained(folder / "served")
        results = {("local", 0): run("local", 0, folder, None), ("local", 1): run("local", 1, folder, None)}
        with serving(folder / "served", folder) as url:
            results[("server", 0)] = run("server", 0, folder, url)
            results[("server", 1)] = run("server", 1, folder, url)
    base = results[("local", 0)]["step"]
    lines = [
        "# An online step: local decoding loop vs an inference server, synchronous vs one step off",
        "",
        "`nice -n 10 python benchmarks/online_rollout.py --write benchmarks/RESULTS_online_rollout.md`; see the "
        "script's docstring for what is measured.",
        "",
        "| engine | max_staleness | step s | sampling s | weight sync s | training s | step vs local sync |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (engine, staleness), r in results.items():
        lines.append(f"| {engine} | {staleness} | {r['step']:.2f} | {r['sampling']:.2f} | {r['sync']:.2f} | "
                     f"{r['training']:.2f} | {base / r['step']:.2f}x |")
    load = f"load average {load_before:.1f} before the runs, {os.getloadavg()[0]:.1f} after"
    lines += ["", f"Means over steps 2-{STEPS} of one run each; {load}. Machine: {machine_summary()}; torch "
              f"{torch.__version__}, fp32, 1 thread per process."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        args.write.write_text(text)


if __name__ == "__main__":
    main()
