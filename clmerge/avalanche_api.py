"""The one place clmerge imports Avalanche (avalanche-lib 0.6).

Avalanche's API moves between releases; every other module imports the names it needs
from here, so an upgrade touches this file only.
"""

from __future__ import annotations

from avalanche.benchmarks.scenarios.generic_scenario import CLScenario
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.evaluation.metric_definitions import GenericPluginMetric
from avalanche.evaluation.metrics.accuracy import Accuracy
from avalanche.training.plugins import EvaluationPlugin, EWCPlugin, LwFPlugin
from avalanche.training.templates import SupervisedTemplate

__all__ = [
    "CLScenario",
    "class_incremental_benchmark",
    "benchmark_from_datasets",
    "SupervisedPlugin",
    "MetricValue",
    "accuracy_metrics",
    "loss_metrics",
    "GenericPluginMetric",
    "Accuracy",
    "EvaluationPlugin",
    "EWCPlugin",
    "LwFPlugin",
    "SupervisedTemplate",
]
