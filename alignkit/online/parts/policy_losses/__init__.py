"""The registered policy losses, one module each (importing this package registers them)."""

from alignkit.online.parts.policy_losses import cispo, dapo, gmpo, gspo, ppo_clip, sapo, vanilla_pg

__all__ = ["cispo", "dapo", "gmpo", "gspo", "ppo_clip", "sapo", "vanilla_pg"]
