"""The equivalence matrix: one process, two processes (ddp) and two sharded processes (fsdp) train alike.

Every registered objective (reward models included) trains a tiny model 3 optimizer steps with the real
Trainer in each layout; per-step train losses, gradient norms, eval losses and the final trainable weights
must agree. On DPO (and the Bradley-Terry reward model where the setting applies) the matrix also crosses:
gradient accumulation 1 vs 2 at the same global batch, packed vs padded forwards, a live (copy) vs a cached
reference, LoRA and bottleneck adapters (reference: adapters_off), and a run killed after 2 of 3 steps on
one layout and resumed on the other.

Each layout is launched once with all its cases in one process group (equivalence_worker.py); the
launches run in a module fixture, the tests only compare what they wrote:

    one          1 process: every case (the baselines), and runs stopped after step 2 for `fsdp` to resume
    ddp          2 processes, strategy ddp: every objective, the cached reference
    fsdp         2 processes, strategy fsdp: every case; resumes `one`'s stopped runs, stops two of its own
    one-resume   1 process: resumes the runs `fsdp` stopped

Gradient-scale mistakes (a mean where a sum belongs) barely move the weights: the gradient norm is clipped
to 1 and Adam divides by the root of its own running second moment, so both are blind to a constant factor.
The logged pre-clip gradient norm is not: it is compared at every step too.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from process_group import free_port
from safetensors.torch import load_file

from alignkit.losses import list_losses

WORKER = Path(__file__).with_name("equivalence_worker.py")
LR = 1e-3
STEPS = 3
STOP_AFTER = 2  # the killed runs die when step 3 (0-based 2) begins: their step-2 checkpoint is on disk
LAUNCH_TIMEOUT_S = 300  # one launch (about 10-90 s on 2 idle cores)
MATRIX_TIMEOUT_S = 780  # all of them: a hang fails the tests, it does not eat the CI budget

@dataclass(frozen=True)
class Tolerances:
    """How closely two layouts' runs must agree, in one precision."""

    loss_rtol: float
    loss_atol: float
    grad_norm_rtol: float
    weight_rtol: float
    update_rtol: float
    max_abs: float
    null_max_abs: float


# fp32: every case pins train.precision fp32 (never the machine's auto).
# Per-step losses agree to this relative tolerance (a floor for exact zeros: a hinge loss at its margin).
# The pre-clip gradient norm: one number per step summed from many elements (and, sharded, reduced from the
# shards' norms): a little more float noise than a loss, still far below a wrong factor (2 with 2 processes).
# Weights after 3 steps. The per-element relative test is not meaningful under fp32 AdamW: an element whose
# gradient is near zero moves by lr * m / (sqrt(v) + eps) with |m| / sqrt(v) of order 1 whatever the
# gradient's size, so a rounding difference of 1e-9 in such a gradient (a different summation order over
# processes or micro-batches) changes its update by a sizeable part of lr: a relative error of order 1 in that
# element, while the weights as a whole agree to 1e-7. So the test is global: the norm of the difference over
# every trainable tensor relative to the weights' norm (weight_rtol, the requirement), and relative to the
# norm of what training changed (update_rtol, 100x stricter here: the update is ~1/10 of the weights); plus no
# element may differ by a sizeable part of one Adam step (max_abs ~ lr; elements with a real gradient move
# ~2 lr in these 3 steps).
FP32 = Tolerances(loss_rtol=1e-5, loss_atol=1e-9, grad_norm_rtol=1e-4, weight_rtol=1e-5, update_rtol=1e-4,
                  max_abs=0.05 * LR, null_max_abs=0.5 * LR)
# Tensors whose gradient is exactly zero in exact arithmetic, so that their update is rounding noise
# amplified by Adam (about lr * |noise| / (|noise| + eps), 0.1-0.2 lr over these 3 steps here) and
# differs between layouts by as much: the reward losses depend on score differences only (Bradley-Terry:
# r_w - r_l; K-way: a softmax over the candidates), and the final layer norm's bias shifts every score alike
# (score.weight . bias). They are compared only loosely (no element apart by null_max_abs) and checked
# to have moved by noise alone in the baseline (under half of what a trained element moves).
NULL_GRADIENT = {"reward_bt": {"transformer.ln_f.bias"}, "reward_kway": {"transformer.ln_f.bias"}}

OBJECTIVES = sorted(spec.name for spec in list_losses())
DPO = {"name": "dpo"}  # build_objective({"name": name}) defaults: every registered loss has valid ones
REWARD = {"name": "reward_bt"}
VARIANT_LOSSES = {"dpo": DPO, "reward_bt": REWARD}


def _case(name: str, loss: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return {"name": name, "loss": loss, "lr": LR, "steps": STEPS, "precision": "fp32", **settings}


@dataclass(frozen=True)
class Comparison:
    """``launch/case`` must reproduce the baseline ``base_launch/base_case``."""

    id: str
    launch: str
    case: str  # "<loss>" or "<loss>@<variant>"
    base_launch: str = "one"
    base_case: str = ""

    @property
    def loss(self) -> str:
        return self.case.split("@")[0]

    @property
    def baseline(self) -> tuple[str, str]:
        return self.base_launch, self.base_case or self.case


def _variant_cases(root: Path, layout: str) -> list[dict[str, Any]]:
    """The DPO / reward-model variants of one layout ("one", "fsdp" or "one-resume")."""
    cases: list[dict[str, Any]] = []
    if layout == "one-resume":
        for loss_name, loss in VARIANT_LOSSES.items():
            cases.append(_case(f"{loss_name}@resume-from-fsdp", loss, resume=True,
                               run_dir=str(root / "fsdp" / f"{loss_name}@stop" / "run")))
        return cases
    strategy = {"strategy": "fsdp"} if layout == "fsdp" else {}
    for loss_name, loss in VARIANT_LOSSES.items():
        cases.append(_case(f"{loss_name}@ga2", loss, grad_accum=2, **strategy))
        for kind in ("lora", "bottleneck"):
            reference = {"reference": "adapters_off"} if loss_name == "dpo" else {}
            cases.append(_case(f"{loss_name}@{kind}", loss, adapter=kind, **reference, **strategy))
        cases.append(_case(f"{loss_name}@stop", loss, stop_after=STOP_AFTER, **strategy))
        if layout == "fsdp":
            cases.append(_case(f"{loss_name}@resume-from-one", loss, resume=True, strategy="fsdp",
                               run_dir=str(root / "one" / f"{loss_name}@stop" / "run")))
    # Packing and the reference cache apply to log-prob objectives with a reference: DPO only.
    cases.append(_case("dpo@padded", DPO, padding_free=False, **strategy))
    cases.append(_case("dpo@cached", DPO, reference="cached", **strategy))
    return cases


def launch_plan(root: Path, precision: str = "fp32") -> list[tuple[str, int, list[dict[str, Any]]]]:
    """(layout, processes, cases) in the order they must run (a resume follows the launch that stopped)."""
    if precision == "bf16":
        return bf16_launch_plan(root)
    base = {name: _case(name, {"name": name}) for name in OBJECTIVES}
    return [
        ("one", 1, [*base.values(), *_variant_cases(root, "one")]),
        ("ddp", 2, [*({**c, "strategy": "ddp"} for c in base.values()),
                    _case("dpo@cached", DPO, reference="cached", strategy="ddp")]),
        ("fsdp", 2, [*({**c, "strategy": "fsdp"} for c in base.values()), *_variant_cases(root, "fsdp")]),
        ("one-resume", 1, _variant_cases(root, "one-resume")),
    ]


def comparisons() -> list[Comparison]:
    out = []
    for name in OBJECTIVES:
        out.append(Comparison(f"{name}:ddp", "ddp", name))
        out.append(Comparison(f"{name}:fsdp", "fsdp", name))
    for loss_name in VARIANT_LOSSES:
        for launch in ("one", "fsdp"):  # grad_accum 2 at the same global batch as grad_accum 1
            out.append(Comparison(f"{loss_name}:grad_accum2:{launch}", launch, f"{loss_name}@ga2",
                                  base_case=loss_name))
        for kind in ("lora", "bottleneck"):
            out.append(Comparison(f"{loss_name}:{kind}:fsdp", "fsdp", f"{loss_name}@{kind}"))
        out.append(Comparison(f"{loss_name}:stopped-fsdp-resumed-one", "one-resume",
                              f"{loss_name}@resume-from-fsdp", base_case=loss_name))
        out.append(Comparison(f"{loss_name}:stopped-one-resumed-fsdp", "fsdp",
                              f"{loss_name}@resume-from-one", base_case=loss_name))
    for launch in ("one", "fsdp"):
        out.append(Comparison(f"dpo:padded:{launch}", launch, "dpo@padded", base_case="dpo"))
    for launch in ("one", "ddp", "fsdp"):
        out.append(Comparison(f"dpo:cached:{launch}", launch, "dpo@cached", base_case="dpo"))
    return out


COMPARISONS = comparisons()


# ---------------------------------------------------------------------------------------------------------
# The bf16 tier: the same comparisons under bf16 autocast, on DPO and the Bradley-Terry reward model (every
# objective's arithmetic is alike across layouts; what a layout can get wrong is the batch split, the
# accumulation scale, the shards, the reference and the checkpoint, which these cases cross). Emulated bf16
# matmuls are ~60x slower than fp32 on a CPU without bf16 units, so the tier is this subset.

def bf16_launch_plan(root: Path) -> list[tuple[str, int, list[dict[str, Any]]]]:
    """The bf16 tier's launches: like :func:`launch_plan`, plus a run stopped on one process and resumed on
    one process (``dpo@stop-same`` / ``dpo@resume-same``), which must be bit-identical to the uninterrupted run."""

    def bf16(name: str, loss: dict[str, Any], **settings: Any) -> dict[str, Any]:
        return _case(name, loss, **{**settings, "precision": "bf16"})

    def variants(layout: str) -> list[dict[str, Any]]:
        strategy = {"strategy": "fsdp"} if layout == "fsdp" else {}
        cases = [bf16("dpo@ga2", DPO, grad_accum=2, **strategy), bf16("dpo@padded", DPO, padding_free=False, **strategy),
                 bf16("dpo@cached", DPO, reference="cached", **strategy),
                 bf16("dpo@stop", DPO, stop_after=STOP_AFTER, **strategy)]
        if layout == "one":
            cases.append(bf16("dpo@stop-same", DPO, stop_after=STOP_AFTER))
        else:
            cases += [bf16(f"dpo@{kind}", DPO, adapter=kind, reference="adapters_off", **strategy)
                      for kind in ("lora", "bottleneck")]
            cases.append(bf16("dpo@resume-from-one", DPO, resume=True, strategy="fsdp",
                              run_dir=str(root / "one" / "dpo@stop" / "run")))
            cases.append(bf16("dpo@mixed", DPO, mixed_precision=True, **strategy))
        return cases

    base = [bf16("dpo", DPO), bf16("reward_bt", REWARD)]
    one_adapters = [bf16(f"dpo@{kind}", DPO, adapter=kind, reference="adapters_off") for kind in ("lora", "bottleneck")]
    return [
        ("one", 1, [*base, *one_adapters, *variants("one")]),
        ("ddp", 2, [*({**c, "strategy": "ddp"} for c in base), bf16("dpo@cached", DPO, reference="cached",
                                                                    strategy="ddp")]),
        ("fsdp", 2, [*({**c, "strategy": "fsdp"} for c in base), *variants("fsdp")]),
        ("one-resume", 1, [bf16("dpo@resume-from-fsdp", DPO, resume=True, run_dir=str(root / "fsdp" / "dpo@stop" / "run")),
                           bf16("dpo@resume-same", DPO, resume=True, run_dir=str(root / "one" / "dpo@stop-same" / "run"))]),
    ]


BF16_COMPARISONS = [
    *(Comparison(f"{loss}:{launch}", launch, loss) for loss in ("dpo", "reward_bt") for launch in ("ddp", "fsdp")),
    *(Comparison(f"dpo:grad_accum2:{launch}", launch, "dpo@ga2", base_case="dpo") for launch in ("one", "fsdp")),
    *(Comparison(f"dpo:{kind}:fsdp", "fsdp", f"dpo@{kind}") for kind in ("lora", "bottleneck")),
    Comparison("dpo:fsdp-mixed-precision", "fsdp", "dpo@mixed", base_case="dpo"),  # as a bf16 fsdp run shards
    *(Comparison(f"dpo:padded:{launch}", launch, "dpo@padded", base_case="dpo") for launch in ("one", "fsdp")),
    *(Comparison(f"dpo:cached:{launch}", launch, "dpo@cached", base_case="dpo") for launch in ("one", "ddp", "fsdp")),
    Comparison("dpo:stopped-fsdp-resumed-one", "one-resume", "dpo@resume-from-fsdp", base_case="dpo"),
    Comparison("dpo:stopped-one-resumed-fsdp", "fsdp", "dpo@resume-from-one", base_case="dpo"),
]


# ---------------------------------------------------------------------------------------------------------
@dataclass
class Launch:
    layout: str
    folder: Path
    cache: Path
    error: str | None
    seconds: float


@dataclass
class Matrix:
    root: Path
    launches: dict[str, Launch]
    precision: str = "fp32"

    def folder(self, layout: str, case: str) -> Path:
        launch = self.launches[layout]
        if launch.error is not None:
            pytest.fail(f"launch {layout!r} failed:\n{launch.error}")
        return launch.folder / case

    def losses(self, layout: str, case: str) -> dict[str, Any]:
        return json.loads((self.folder(layout, case) / "losses.json").read_text())

    def weights(self, layout: str, case: str, file: str = "weights.safetensors") -> dict[str, torch.Tensor]:
        return load_file(str(self.folder(layout, case) / file))

    def ranks(self, layout: str, case: str) -> list[dict[str, Any]]:
        folder = self.folder(layout, case)
        return [json.loads(p.read_text()) for p in sorted(folder.glob("rank*.json"))]


def _run_launch(root: Path, layout: str, processes: int, cases: list[dict[str, Any]],
                timeout: float) -> Launch:
    folder, cache = root / layout, root / f"cache-{layout}"
    folder.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "ALIGNKIT_CACHE": str(cache)}  # a fresh cache a launch: nothing computed by another launch is read
    command = [sys.executable]
    if processes > 1:
        command += ["-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                    f"--master_port={free_port()}"]
    command += [str(WORKER), str(folder), json.dumps(cases)]
    start = time.monotonic()
    # Its own process group: on a timeout torchrun and its workers are killed together, none left behind.
    proc = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
        error = None if proc.returncode == 0 else f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        error = f"timed out after {timeout:.0f}s"
    if error is not None:
        error += f"; stderr tail:\n{stderr[-4000:]}"
    return Launch(layout, folder, cache, error, time.monotonic() - start)


def build_matrix(root: Path, precision: str) -> Matrix:
    """Run every launch of :func:`launch_plan` in ``precision`` under ``root``."""
    deadline = time.monotonic() + MATRIX_TIMEOUT_S
    launches: dict[str, Launch] = {}
    for layout, processes, cases in launch_plan(root, precision):
        needs = {"fsdp": "one", "one-resume": "fsdp"}.get(layout)
        left = min(LAUNCH_TIMEOUT_S, deadline - time.monotonic())
        if (needs is not None and launches[needs].error is not None) or left <= 0:
            why = f"launch {needs!r}, whose stopped runs it resumes, failed" if left > 0 else "no time left"
            launches[layout] = Launch(layout, root / layout, root / f"cache-{layout}", f"not run: {why}", 0.0)
            continue
        launches[layout] = _run_launch(root, layout, processes, cases, left)
    timings = ", ".join(f"{name} {launch.seconds:.0f}s" for name, launch in launches.items())
    print(f"\nequivalence launches ({precision}): {timings}")
    return Matrix(root, launches, precision)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Matrix:
    return build_matrix(tmp_path_factory.mktemp("equivalence"), "fp32")


# ---------------------------------------------------------------------------------------------------------
def _global_norm(tensors: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors.values()))


def assert_same_training(matrix: Matrix, c: Comparison, tol: Tolerances = FP32) -> None:
    got, want = matrix.losses(c.launch, c.case), matrix.losses(*c.baseline)
    label = f"{c.launch}/{c.case} vs {'/'.join(c.baseline)}"
    assert got["train_steps"] == want["train_steps"] == list(range(1, STEPS + 1)), label
    assert got["eval_steps"] == want["eval_steps"] == list(range(STEPS + 1)), label
    assert got["learning_rate"] == want["learning_rate"], f"{label}: LR schedules differ"
    assert got["train"] == pytest.approx(want["train"], rel=tol.loss_rtol, abs=tol.loss_atol), f"{label}: train loss"
    assert got["eval"] == pytest.approx(want["eval"], rel=tol.loss_rtol, abs=tol.loss_atol), f"{label}: eval loss"
    assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=tol.grad_norm_rtol), f"{label}: gradient norm"

    a, b = matrix.weights(*c.baseline), matrix.weights(c.launch, c.case)
    assert a.keys() == b.keys() and a, f"{label}: trainable tensors differ: {sorted(a.keys() ^ b.keys())[:5]}"
    initial = matrix.weights(*c.baseline, file="initial.safetensors")
    null = NULL_GRADIENT.get(c.loss, set()) & a.keys()
    for name in sorted(null):
        moved = float((a[name] - initial[name]).abs().max())
        assert moved < 0.5 * sum(want["learning_rate"]), f"{label}: {name} has a gradient (moved {moved:.3g})"
        apart = float((a[name].double() - b[name].double()).abs().max())
        assert apart < tol.null_max_abs, f"{label}: {name} differs by {apart:.3g}"
    names = sorted(a.keys() - null)
    diff = {n: a[n].double() - b[n].double() for n in names}
    relative = _global_norm(diff) / _global_norm({n: a[n] for n in names})
    assert relative <= tol.weight_rtol, f"{label}: ||a-b||/||a|| = {relative:.3g}"
    update = _global_norm({n: a[n].double() - initial[n].double() for n in names})
    assert update > 0, f"{label}: training did not change the weights"
    assert _global_norm(diff) <= tol.update_rtol * update, (
        f"{label}: ||a-b|| = {_global_norm(diff):.3g}, more than {tol.update_rtol:g} of the update {update:.3g}")
    worst_name, worst = max(((n, float(d.abs().max())) for n, d in diff.items()), key=lambda x: x[1])
    assert worst < tol.max_abs, f"{label}: {worst_name} differs by {worst:.3g} (one Adam step is about {LR:g})"


@pytest.mark.slow
@pytest.mark.parametrize("comparison", COMPARISONS, ids=[c.id for c in COMPARISONS])
def test_equivalent(matrix: Matrix, comparison: Comparison) -> None:
    assert_same_training(matrix, comparison)
    base = matrix.losses(*comparison.baseline)
    # Not vacuous: the baseline trained (its loss moved), and the compared run was laid out as claimed.
    assert base["train"][-1] != base["train"][0] or base["eval"][-1] != base["eval"][0]
    ranks = matrix.ranks(comparison.launch, comparison.case)
    expected = 2 if comparison.launch in ("ddp", "fsdp") else 1
    assert [r["world_size"] for r in ranks] == [expected] * expected
    assert all(r["autocast"] == "None" for r in ranks)  # fp32 pinned, whatever the machine's auto


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["one", "ddp", "fsdp", "one-resume"])
def test_layout_is_what_it_claims(matrix: Matrix, layout: str) -> None:
    """fsdp cases really shard: each process holds half of the trainable elements after every optimizer step
    and after every evaluation (a forward without backward: the gathered parameters were freed again) and at
    the end; the other layouts hold whole tensors."""
    cases = [case for name, _, cases in launch_plan(matrix.root, matrix.precision) if name == layout
             for case in cases]
    for case in cases:
        for info in matrix.ranks(layout, case["name"]):
            states = [info, *info["after_step"], *info["after_eval"]]
            assert info["after_eval"] and info["after_step"], (case["name"], info)
            for state in states:
                if layout == "fsdp":
                    assert state["sharded"] and state["all_dtensor"], (case["name"], state)
                    assert state["local_fraction"] == pytest.approx(0.5, abs=0.01), (case["name"], state)
                else:
                    assert not state["sharded"] and state["local_fraction"] == 1.0, (case["name"], state)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["one", "fsdp"])
def test_stopped_runs_stopped_and_resumed_runs_resumed(matrix: Matrix, layout: str) -> None:
    resumer = {"one": "fsdp", "fsdp": "one-resume"}[layout]
    resumed_case = {"one": "{}@resume-from-one", "fsdp": "{}@resume-from-fsdp"}[layout]
    for loss_name in VARIANT_LOSSES:
        ranks = matrix.ranks(layout, f"{loss_name}@stop")
        assert ranks and all(r["stopped_at"] == STOP_AFTER for r in ranks)
        assert not (matrix.folder(layout, f"{loss_name}@stop") / "losses.json").exists()
        losses = matrix.losses(resumer, resumed_case.format(loss_name))
        assert losses["resumed_at"] == STOP_AFTER


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["one", "ddp", "fsdp"])
def test_cached_reference_is_computed_by_every_process(matrix: Matrix, layout: str) -> None:
    """Each process has its own empty cache folder: it computes the reference log-probs itself (before
    sharding) and never reads a file another process wrote; the values are those of one process."""
    ranks = matrix.ranks(layout, "dpo@cached")
    assert len(ranks) == (1 if layout == "one" else 2)
    for rank, info in enumerate(ranks):
        assert info["cache_existed"] is False, info
        assert Path(info["cache_file"]).parent.parent == matrix.launches[layout].cache / f"rank{rank}"
    mine = load_file(ranks[0]["cache_file"])  # the main process writes its file
    one = load_file(matrix.ranks("one", "dpo@cached")[0]["cache_file"])
    for key in ("chosen", "rejected"):
        torch.testing.assert_close(mine[key], one[key], rtol=1e-6, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# The bf16 tier


@pytest.fixture(scope="module")
def matrix_bf16(tmp_path_factory: pytest.TempPathFactory) -> Matrix:
    return build_matrix(tmp_path_factory.mktemp("equivalence-bf16"), "bf16")


# bf16 autocast: every matmul output is rounded to bf16, relative error <= u = 2^-8 = 3.9e-3 per rounding (8
# significant bits; fp32's u is 2^-24). Weights, AdamW states, losses and log-prob reductions stay fp32. Where the
# layouts round differently (tests/train/test_precision_parity.py shows it on the real trainer):
# - the forward: not at all. The same rows give the same bf16 logits whatever the batch split (measured: step 1's
#   loss is bit-identical in every layout, for DPO and the reward model).
# - a weight's gradient is a bf16 matmul output (grad_out^T @ input over the tokens): each process's or micro-
#   batch's share is rounded to bf16 before the fp32 sum over shares, where one process rounds the whole step
#   once. So an element differs by <= u * (|share 1| + |share 2|) + u * |sum| <= 2u * sum of |shares|, and the
#   pre-clip gradient norm (a root-sum-square, dominated by elements whose shares do not cancel) by <= 2u:
#   grad_norm_rtol = 2u = 7.8e-3. Measured (tiny GPT-2, 2-core AMD EPYC): <= 1.8e-3 (reward_bt), 2.9e-4 (DPO).
#   A wrong factor (accumulation scale, processes, shards) moves it by >= 2x.
# - weights after 3 AdamW steps: an element's update lr * m / sqrt(v) moves by at most 2e for a relative error
#   e of its gradient (e in m, e/2 in sqrt(v), rounded up), e <= 2u a step (above), and 3 steps add: the weights
#   differ by at most 3 * 2 * 2u = 12u = 4.7e-2 of the update's norm (update_rtol; measured <= 2.4e-2 reward_bt,
#   1.9e-3 DPO); the update is under 1/10 of the weights here, so <= 12u / 10 = 4.7e-3 of the weights' norm
#   (weight_rtol; measured <= 6.7e-4 with FSDP's mixed precision, else 2.2e-4). An element whose shares cancel (a gradient that is rounding noise) may
#   change sign: Adam then moves it lr the other way, 2 lr apart a step, so no element may be more than
#   3 * 2 * lr = 6 lr apart (max_abs, null_max_abs; measured <= 2.6 lr): the global bounds carry the test.
# - losses (train, eval) at steps 2 and 3: fp32 functions of the same forward on weights <= 12u/10 apart
#   (relative), so the loss moves by far less than one bf16 rounding of itself: loss_rtol = u. Measured:
#   <= 1.8e-4 = u/21 (3.3e-4 with FSDP mixed precision, below).
# - FSDP's own mixed precision (dpo@mixed, what a bf16 fsdp run uses: weights gathered in bf16) adds one
#   rounding of every weight (<= u), also of those autocast leaves fp32 in one process (embeddings, layer norms,
#   biases): the same bounds hold with one more u in each value; measured 3.1e-4 (loss), 3.5e-4 (gradient norm).
U_BF16 = 2.0**-8
BF16 = Tolerances(loss_rtol=U_BF16, loss_atol=1e-9, grad_norm_rtol=2 * U_BF16, weight_rtol=12 * U_BF16 / 10,
                  update_rtol=12 * U_BF16, max_abs=6 * LR, null_max_abs=6 * LR)
# What bf16 must still give exactly: a run stopped on 1 process and resumed on 1 process (the same ops as the
# uninterrupted run, replayed from an fp32 checkpoint) and the first step of DPO with a copy/adapters-off reference
# (or, in one process, a cached one).
EXACT_FIRST_STEP = {"dpo", "dpo@ga2", "dpo@padded", "dpo@lora", "dpo@bottleneck", "dpo@mixed"}


@pytest.mark.slow
@pytest.mark.parametrize("comparison", BF16_COMPARISONS, ids=[c.id for c in BF16_COMPARISONS])
def test_equivalent_in_bf16(matrix_bf16: Matrix, comparison: Comparison) -> None:
    assert_same_training(matrix_bf16, comparison, BF16)
    base = matrix_bf16.losses(*comparison.baseline)
    # policy = reference at step 1: the same ops, log-ratio exactly 0; a cached reference is computed by the
    # training forward's ops (4 rows, under the same autocast) in one process, so it too, there
    if comparison.case in EXACT_FIRST_STEP or comparison.id == "dpo:cached:one":
        ln2 = float(torch.tensor(math.log(2)))  # -log sigmoid(0) in fp32
        assert matrix_bf16.losses(comparison.launch, comparison.case)["train"][0] == base["train"][0] == ln2
    assert base["train"][-1] != base["train"][0] or base["eval"][-1] != base["eval"][0]
    expected = 2 if comparison.launch in ("ddp", "fsdp") else 1
    ranks = matrix_bf16.ranks(comparison.launch, comparison.case)
    assert [r["world_size"] for r in ranks] == [expected] * expected
    assert all(r["autocast"] == "torch.bfloat16" for r in ranks)  # the tier runs in bf16, whatever the machine


@pytest.mark.slow
def test_a_run_resumed_on_the_same_layout_is_bit_identical_in_bf16(matrix_bf16: Matrix) -> None:
    """Stopped after step 2 on one process and resumed on one process: the same operations as the uninterrupted
    run, from an fp32 checkpoint, so bf16 rounds every value alike: equal, not close."""
    got, want = matrix_bf16.losses("one-resume", "dpo@resume-same"), matrix_bf16.losses("one", "dpo")
    assert got["resumed_at"] == STOP_AFTER
    for key in ("train", "eval", "grad_norm", "learning_rate"):
        assert got[key] == want[key], key
    a, b = matrix_bf16.weights("one", "dpo"), matrix_bf16.weights("one-resume", "dpo@resume-same")
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
