"""Evaluation: sampling, rewards, KL to the reference, and the uncertainty of the figures.

Submodules (imported directly, so that reading a recipe's ``eval:`` section never loads torch):

- :mod:`alignkit.models.generate`: batched, seeded completions with their token ids.
- :mod:`alignkit.models.rewards`: the registry of reward functions (``vader_sentiment``, ...).
- :mod:`alignkit.eval.kl`: sample-based KL(policy || reference) per completion.
- :mod:`alignkit.eval.stats`: bootstrap and normal confidence intervals, subsample spread.
- :mod:`alignkit.eval.reward_kl`: the reward-versus-KL report before and after training.
- :mod:`alignkit.eval.config`: the recipe's ``eval:`` section.
"""

__all__: list[str] = []
