"""The registered advantage estimators, one module each (importing this package registers them)."""

from alignkit.online.parts.advantages import dr_grpo, gae, grpo, reinforce, reinforce_pp, rloo

__all__ = ["dr_grpo", "gae", "grpo", "reinforce", "reinforce_pp", "rloo"]
