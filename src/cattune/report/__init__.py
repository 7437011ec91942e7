"""The experiment report: a comparison table, findings computed from the numbers, and PNG plots.

Input is the ``results`` dict that ``cattune experiment`` writes as ``results.json``. Every
claim is taken from the recorded numbers: accuracies with their n and 95% intervals, the
majority-class baseline of each split, the paired test of each arm (CAT first) against the
baseline, and the flip rate (share of answers that change when only the spurious values change;
lower is better). Attention shares are reported as a diagnostic only: behaviour is the measure.

One concept per module:

- ``results``: reading the results dict (arms, splits, seeds, paired tests, attention blocks)
- ``format``: arm names, percentages, p-values, intervals, cells and Markdown tables
- ``comparison``: each arm against the baseline (:func:`compare_arms`) and the comparison table
- ``sentences``: the findings, sentences computed from the numbers
- ``grid``: the rows and table of a multi-variant grid
- ``pooled``: one comparison over the seeds of several experiments' results
- ``tables``: the further tables (numeric error, flips by token change, attention, per seed, losses)
- ``plots``: the PNG plots
- ``document``: ``report.md`` and the plots, written by :func:`write_report`
"""

from cattune.report.comparison import ALPHA, Comparison, compare_arms, comparison_table
from cattune.report.document import write_report
from cattune.report.grid import grid_rows, grid_table
from cattune.report.plots import (
    plot_accuracy,
    plot_attention_by_layer,
    plot_attention_over_training,
    plot_grid_summary,
    plot_heatmaps,
)
from cattune.report.pooled import pooled_comparison, pooled_table
from cattune.report.results import ATTENTION_CATEGORIES, BASELINE, CAT
from cattune.report.sentences import findings
from cattune.report.tables import loss_table, numeric_error_table, token_change_table

__all__ = [
    "ALPHA",
    "ATTENTION_CATEGORIES",
    "BASELINE",
    "CAT",
    "Comparison",
    "compare_arms",
    "comparison_table",
    "findings",
    "grid_rows",
    "grid_table",
    "loss_table",
    "numeric_error_table",
    "plot_accuracy",
    "plot_attention_by_layer",
    "plot_attention_over_training",
    "plot_grid_summary",
    "plot_heatmaps",
    "pooled_comparison",
    "pooled_table",
    "token_change_table",
    "write_report",
]
