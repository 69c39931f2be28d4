"""Held-out evaluation of a trained policy: KL to the reference, reward versus KL, judged win rates.

- :mod:`alignkit.eval.reward_kl`: mean reward and KL of a model's samples, with intervals.
- :mod:`alignkit.eval.before_after`: the reference (before) and the policy (after) on the same prompts.
- :mod:`alignkit.eval.heldout`: the ``eval:`` section of a run: reward/KL and the judged win rate.
- :mod:`alignkit.eval.judges`: pairwise judges (local model, OpenAI-compatible server, reward), registered.
- :mod:`alignkit.eval.winrate`: order-debiased win rate and its length-controlled variant.
- :mod:`alignkit.eval.stats`: bootstrap and normal confidence intervals, subsample spread.
- :mod:`alignkit.eval.config`: the recipe's ``eval:`` section.

The KL estimate (:mod:`alignkit.models.kl`), sampling (:mod:`alignkit.models.generate`) and the reward registry (:mod:`alignkit.models.rewards`) are
model-level services one layer down, shared with data generation and online training.
"""

__all__: list[str] = []
