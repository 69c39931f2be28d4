"""Training: the one fit loop and what it needs around it.

- :mod:`alignkit.train.trainer`: preference, SFT and reward-model stages (an objective over batches).
- :mod:`alignkit.train.loop`: resume, metrics, evaluation and early stopping, checkpoints; shared with the
  online trainer.
- :mod:`alignkit.train.checkpoint`, :mod:`alignkit.train.tensor_tree`: checkpoints as safetensors and JSON
  (nothing is unpickled).
- :mod:`alignkit.train.divergence`: a non-finite loss, gradient or weight stops the stage before it is saved.
- :mod:`alignkit.train.distributed`, :mod:`alignkit.train.schedule`, :mod:`alignkit.train.metrics`,
  :mod:`alignkit.train.dropout`, :mod:`alignkit.train.summary`: processes, learning-rate schedules, the
  metrics log, dropout off, the typed stage summary.
"""

__all__: list[str] = []
