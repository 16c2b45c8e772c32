"""Hyper-parameter sweeps: ``stop-lightning sweep <name> [overrides]`` (``make sweep SWEEP=<name>``).

A sweep file ``sweeps/<name>.yaml`` is a W&B sweep configuration (``method``, ``metric``,
``parameters``, optional ``run_cap``) whose parameter names are our dotted config keys, plus
three keys of ours that are never sent to W&B::

    experiment: hmdb51                  # experiments/<name>.yaml every trial starts from
    overrides: [trainer.max_epochs=10]  # fixed for every trial (may tie keys: a=${b})
    seed: 0                             # random search draws (offline)

Online (a W&B API key and ``WANDB_MODE`` not offline) the sweep is created with ``wandb.sweep``
and an agent runs the trials in this process. Offline the same file runs as a local search:
``grid`` enumerates every combination, ``random`` draws ``run_cap`` trials (``bayes`` falls back
to random). Every trial is one ``train()`` run in ``<output_dir>/sweeps/<name>/<stamp>/trial-NNN``;
the offline search writes ``results.csv``, ``results.md`` and ``metric_vs_hyperparameters.png``
(the metric against each hyper-parameter, as in Figure 4 of the paper) next to them.

The package: :mod:`~stop_lightning.sweep.spec` reads and checks sweep files,
:mod:`~stop_lightning.sweep.search` plans the offline trials, :mod:`~stop_lightning.sweep.runner`
runs them (offline or through a W&B agent) and :mod:`~stop_lightning.sweep.report` writes the
table and the plot.
"""

from stop_lightning.sweep.report import PLOT_FILE, TrialResult, best_result, results_csv, write_results
from stop_lightning.sweep.runner import run_offline, run_online, run_trial, sweep_main, trial_config
from stop_lightning.sweep.search import grid_trials, plan_trials, random_trials, sample_value
from stop_lightning.sweep.spec import SweepError, SweepSpec, distribution, load_sweep

__all__ = [
    "PLOT_FILE",
    "SweepError",
    "SweepSpec",
    "TrialResult",
    "best_result",
    "distribution",
    "grid_trials",
    "load_sweep",
    "plan_trials",
    "random_trials",
    "results_csv",
    "run_offline",
    "run_online",
    "run_trial",
    "sample_value",
    "sweep_main",
    "trial_config",
    "write_results",
]
