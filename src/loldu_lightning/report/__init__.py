"""Hydra multirun results -> Markdown/CSV tables and figures (`python -m loldu_lightning.report`)."""

from loldu_lightning.report.build import Report, build_report

__all__ = ["Report", "build_report"]
