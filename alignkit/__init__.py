"""alignkit: align language models from preference data."""

from alignkit.losses import (
    LossOutput,
    PreferenceStats,
    get_loss,
    list_losses,
    register_loss,
)

__all__ = ["LossOutput", "PreferenceStats", "get_loss", "list_losses", "register_loss"]
__version__ = "0.1.0"
