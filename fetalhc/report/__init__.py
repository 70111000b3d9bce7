"""Result folders a person reads: tables, maps, figures and pages of ``explain``,
``evaluate`` and ``merge``, written through :mod:`fetalhc.files`.

The CLI, the demo and the study call these writers; nothing here parses options.
``report`` may import ``explain``, ``evaluate``, ``viz`` and what they import (never
``training`` or ``cli``); see docs/architecture.md.
"""

from fetalhc.report.demo import write_demo_report
from fetalhc.report.evaluation import check_evaluation_request, write_evaluation
from fetalhc.report.evaluation_provenance import write_maps_provenance
from fetalhc.report.evaluation_summary import write_summaries
from fetalhc.report.explanations import stack_maps, write_explanations, write_index_and_grid
from fetalhc.report.merge import merge_shards, read_shards
from fetalhc.report.predictions import predict_to_files, write_predictions

__all__ = [
    "check_evaluation_request",
    "merge_shards",
    "predict_to_files",
    "read_shards",
    "stack_maps",
    "write_demo_report",
    "write_evaluation",
    "write_explanations",
    "write_index_and_grid",
    "write_maps_provenance",
    "write_predictions",
    "write_summaries",
]
