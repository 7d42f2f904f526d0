"""The report: every variant against FP32 on the same images and the same device, as JSON, Markdown, CSV and
HTML with an accuracy-versus-latency plot (Pareto front marked) and a memory chart.

    data       rows derived against FP32, report.json assembled, loaded (checked) and the Pareto front
    recommend  the variant to ship per runtime within the budget; what is over budget
    render     the tables: Markdown, CSV, HTML
    plots      accuracy against latency, memory, INT8 sensitivity
    files      the report files, replaced as a set; rows measured elsewhere merged in
"""

from compress.report.data import assemble, derive, load, mark_pareto
from compress.report.files import merge, write
from compress.report.recommend import over_budget, recommendations
from compress.report.render import markdown, spread_warnings, to_csv, to_html

__all__ = ["assemble", "derive", "load", "mark_pareto", "merge", "write", "over_budget", "recommendations",
           "markdown", "spread_warnings", "to_csv", "to_html"]
