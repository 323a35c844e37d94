"""What the notebooks share, so that each notebook stays a parameters cell, a few calls and a plot. Notebooks use
`from osessl_core import experiments as ex` and the names below; one module per job:

- paths: repository-relative paths;            configs: the paper recipe vs the smoke budget, run directories;
- registry: the registered methods and their parameters;   datasets: splits, a run's train set, exemplars, pools;
- runner: `start(...)` -> `Experiment` (train through resumable run dirs, write results);
- results: result files with provenance;       paper: the paper's numbers (paper_numbers.json), `with_paper`;
- sweeps: the ablation tables' per-(dataset, row) trainings;   plots / display: figures, tables, inline output;
- probes: features at several depths, evaluation under other labellings, k-NN transfer (Table 5), Figure 4;
- finetune: Table 4's semi-supervised protocol;   timing: Table 17's training cost;
- fixtures: small image folders cut from the CIFAR-10 archive;   quickstart: the README's run, as a notebook's.
"""
from ..paths import default_data_root
from .configs import (EXECUTION_FIELDS, SMOKE_BUDGET, SMOKE_EMBED, SMOKE_METHOD_ARGS, SMOKE_METHODS,
                      SMOKE_QUICKSTART, SMOKE_STREAMED, config_key, recipe_train_config, run_dir_for, smoke_overrides,
                      train_config)
from .datasets import (CIFAR10_STAND_IN_GROUPS, coarse_view, dataset, dataset_available, exemplar_indices,
                       normalization, random_pool, relabel, steps_per_epoch, train_data)
from .display import enable_inline_figures, setup_quiet, table
from .finetune import finetune
from .fixtures import imagenet_stand_in, make_image_folder_from_cifar
from .paper import PAPER, paper_numbers, paper_row, paper_rows, with_paper
from .paths import CIFAR_ARCHIVE_NAME, resolve_path
from .plots import plot_bars, plot_exemplar_grid, plot_sweep
from .quickstart import quickstart
from .probes import (eval_network, evaluate, evaluate_views, exemplar_neighbours, momentum_embeddings,
                     projector_hidden, representations)
from .registry import method_param_names, methods, paper_methods, param_value
from .results import save_figure, write_results
from .runner import Experiment, FullBudgetOnCPUError, load_run, start
from .sweeps import MEASURED, NOT_IMPLEMENTED, mean_std, not_implemented_rows, sweep, sweep_configs
from .timing import load_bench, peak_memory, time_training
from .datasets import images, is_streamed, run_evaluation, split_of, training_resolution  # both kinds
from .probes import frozen_features, knn_transfer

__all__ = [
    "default_data_root", "quickstart",
    "EXECUTION_FIELDS", "SMOKE_BUDGET", "SMOKE_EMBED", "SMOKE_METHOD_ARGS", "SMOKE_METHODS", "SMOKE_QUICKSTART",
    "config_key", "run_dir_for", "smoke_overrides", "train_config",
    "CIFAR10_STAND_IN_GROUPS", "coarse_view", "dataset", "dataset_available", "exemplar_indices", "normalization",
    "random_pool", "relabel", "steps_per_epoch", "train_data",
    "enable_inline_figures", "setup_quiet", "table",
    "finetune", "make_image_folder_from_cifar", "imagenet_stand_in", "SMOKE_STREAMED", "recipe_train_config",
    "PAPER", "paper_numbers", "paper_row", "paper_rows", "with_paper",
    "CIFAR_ARCHIVE_NAME", "resolve_path",
    "plot_bars", "plot_exemplar_grid", "plot_sweep",
    "eval_network", "evaluate", "evaluate_views", "exemplar_neighbours", "momentum_embeddings", "projector_hidden",
    "representations",
    "method_param_names", "methods", "paper_methods", "param_value",
    "save_figure", "write_results",
    "Experiment", "FullBudgetOnCPUError", "load_run", "start",
    "MEASURED", "NOT_IMPLEMENTED", "mean_std", "not_implemented_rows", "sweep", "sweep_configs",
    "load_bench", "peak_memory", "time_training",
    "images", "is_streamed", "run_evaluation", "split_of", "frozen_features", "knn_transfer", "training_resolution",
]
