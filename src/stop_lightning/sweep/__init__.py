"""Hyper-parameter sweeps: ``stop-lightning sweep <name> [overrides]`` (``make sweep SWEEP=<name>``).

A sweep file ``sweeps/<name>.yaml`` is a W&B sweep configuration (``method``, ``metric``,
``parameters``, optional ``run_cap``) whose parameter names are our dotted config keys, plus
three keys of ours that are never sent to W&B::

    experiment: hmdb51                  # experiments/<name>.yaml every trial starts from
    overrides: [trainer.max_epochs=10]  # fixed for every trial (may tie keys: a=${b})
    seed: 0                             # random search draws (offline)

Online (a W&B API key and ``WANDB_MODE`` not offline) the sweep is created with ``wandb.sweep``
and an agent runs the trials in this process; ``--id ID`` joins an existing online sweep instead
(more agents, other nodes). Offline the same file runs as a local search:
``grid`` enumerates every combination, ``random`` draws ``run_cap`` trials (``bayes`` falls back
to random). Every trial is one ``train()`` run in ``<output_dir>/sweeps/<name>/<stamp>/trial-NNN``;
the offline search writes ``results.csv``, ``results.md`` and ``metric_vs_hyperparameters.png``
(the metric against each hyper-parameter, as in Figure 4 of the paper) next to them.

The package: :mod:`~stop_lightning.sweep.spec` reads and checks sweep files,
:mod:`~stop_lightning.sweep.trials` plans the offline trials, :mod:`~stop_lightning.sweep.runner`
runs them (offline or through a W&B agent) and :mod:`~stop_lightning.sweep.report` writes the
table and the plot. The package imports none of them itself: ``sweep.spec`` reads a sweep
file without loading Lightning.
"""
