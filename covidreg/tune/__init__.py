"""Hyperparameter search with Optuna: a TOML search space, cv RMSE as the objective, pruning.

The modules, in the order a study uses them:

* ``space``: the search-space file, checked, and the config each trial draws from it.
* ``storage``: where the study lives (a journal file or a database) and how trials are claimed.
* ``workers``: what one worker process does; ``workers.evaluate`` is the objective.
* ``study``: ``plan_tune`` checks everything and opens the study; ``run_tune`` runs the workers.
* ``reports``: best.toml, trials.csv, history.png and the rows ``covidreg tune --show`` prints.

Design, in the order a trial lives it:

* **Search space.** ``search.toml`` beside this file (shipped in the package; ``--search FILE``
  for another) holds one ``[space.<config key>]`` table per searched key (float / int /
  categorical; ``values = [...]`` is the grid for ``--sampler grid``) and a ``[fixed]`` table of
  config keys applied to every trial. Precedence: defaults -> ``--config`` -> ``[fixed]`` -> CLI
  flags -> the sampled values.
* **One data set.** A new study records its training file, the file's sha256 and its layout
  as study user attributes (``study.data_record``); a run on other bytes is refused before
  anything is written, on every storage. A study begun before this record is given it.
* **Objective.** The mean of the per-fold best validation RMSE over ``n_folds`` folds of the
  config's split (blocked by default), with ``covidreg cv``'s folds, fold seeds and stacks, so
  the best value is what ``covidreg cv --config best.toml`` reports, bit for bit.
  ``n_folds = 1`` is ``covidreg train``'s holdout split and seed.
* **Pruning steps.** The stacks of folds are laid end to end: epoch ``e`` of stack ``g`` is step
  ``(g - 1) * E + e``, ``E`` being the most epochs the search space allows, so a step means the
  same folds and epoch in every trial. The reported value is the running cv RMSE (finished
  folds' RMSE and the best so far of the stack's folds, averaged), so the last value equals the
  objective. Reports are thinned to about 100 per stride: each one is a write to the shared
  storage.
* **Trial count.** ``n_trials`` is a target for the whole study, not "this many more": a worker
  claims a trial only while the study holds fewer counted trials (complete, pruned, failed on its
  own config, or running in a live worker). Claims are serialised by a lock on the journal file,
  or by an advisory lock of the PostgreSQL server, so ``--workers 4 --trials 200`` ends with
  exactly 200, and the same command run again after Ctrl-C finishes the remaining ones
  (numbering continues). A trial stopped by Ctrl-C or by its worker dying is marked failed, does
  not count, and is queued again with the same parameters. A dead worker is found by its process
  id on its own machine, and on a database also by its trial's silent heartbeat (any machine),
  which is why a worker there with nothing left to claim waits for the trials still running.
* **Storage.** By default an Optuna journal file in the run directory (safe for several processes
  on one machine); ``--storage URL`` is an SQLAlchemy URL, PostgreSQL for several machines
  (Optuna's tables are created under an advisory lock, so machines may start at once). By
  default one worker per available CPU core, at most one per trial left to run, and one on
  SQLite. Samplers are seeded from the config seed, the worker number and the study's size when
  the worker starts: a sequential search is reproducible, a parallel one is not (which worker
  claims which trial depends on timing).
"""
