"""``fastattr report``: every available attribution method on N inputs, scored by the report's metrics
(faithfulness, sparseness, complexity, random logit; the relative stabilities and model randomisation
on request), written as a self-contained HTML page plus ``results.json`` / ``results.csv``.

With no arguments it runs on the embedded default (:mod:`fastattr.zoo`: a CNN trained on the
scikit-learn digits). ``model`` / ``data`` point it at a user's own model and tensors. The package
reads in three steps: :mod:`~fastattr.report.loading` (model, data, checks),
:mod:`~fastattr.report.running` (methods, metrics, shards, timings) and
:mod:`~fastattr.report.writing` (results, tables; :mod:`~fastattr.report.html` the page).
"""
from .loading import ReportError, load_data, load_model, usable_device, writable_folder
from .running import CONTROL, report_defaults, run_report
from .writing import ReportResult, best_value, summary_table

__all__ = ["CONTROL", "ReportError", "ReportResult", "best_value", "load_data", "load_model", "report_defaults",
           "run_report", "summary_table", "usable_device", "writable_folder"]
