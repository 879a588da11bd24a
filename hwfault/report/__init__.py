"""Output: files for programs and pages, tables and figures for people.

- :mod:`.jsonout`: strict JSON (written atomically), CSV and Parquet trial rows;
- :mod:`.tables`: rich tables on stderr;
- :mod:`.figures`: matplotlib figures;
- :mod:`.page`: the HTML / Markdown report of a chip estimate;
- :mod:`.labels`: the words for result keys, fault kinds and numbers that all of them show.

Every name is re-exported here: ``from hwfault import report; report.sweep_table(...)``.
"""

from __future__ import annotations

from ..files import FIGURE_SUFFIXES, REPORT_SUFFIXES
from .figures import (COLORS, _mpl, _save_fig, estimate_figure, plot_certify, plot_estimate, plot_hardening,
                      plot_layers, plot_probe, plot_sweep)
from .jsonout import _clean, write_csv, write_json, write_parquet
from .labels import REPORT_KEYS, _num, _pct
from .page import write_report
from .tables import (_bracket_rows, _duration, bits_text, campaign_table, certify_table, chips_table, estimate_table,
                     export_table, hardening_table, plan_table, zoo_table, print_table, probe_table, sweep_table)

__all__ = [  # the private names too: callers use report._pct, report._num
    "COLORS", "bits_text", "chips_table", "zoo_table", "FIGURE_SUFFIXES", "REPORT_KEYS", "REPORT_SUFFIXES", "_bracket_rows", "_clean", "_duration", "_mpl",
    "_num", "_pct", "_save_fig", "campaign_table", "certify_table", "estimate_figure", "estimate_table", "export_table",
    "hardening_table", "plan_table", "plot_certify", "plot_estimate", "plot_hardening", "plot_layers", "plot_probe",
    "plot_sweep", "print_table", "probe_table", "sweep_table", "write_csv", "write_json", "write_parquet",
    "write_report",
]
