"""The run skeleton shared by every command that trains: set-up, stages, saving, evaluation, report.

- :mod:`~alignkit.workflow.skeleton`: :func:`execute_run`, the :class:`RunPlan` a command fills in, and
  :class:`RecipeRun`, what every plan built from a recipe shares.
- :mod:`~alignkit.workflow.run_folder`: whether a run folder may be started, resumed or replaced.
- :mod:`~alignkit.workflow.reference`: which model is the reference, for training and for evaluation.
- :mod:`~alignkit.workflow.model_io`: the run's ``model/`` folder, saved and loaded.
- :mod:`~alignkit.workflow.environment`: device, seeds, peak memory.
"""

from alignkit.workflow.skeleton import RecipeRun, RunContext, RunPlan, RunSummary, execute_run

__all__ = ["RecipeRun", "RunContext", "RunPlan", "RunSummary", "execute_run"]
