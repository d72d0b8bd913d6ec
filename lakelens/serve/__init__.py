"""The review app (`lakelens serve`): flagged clusters, rules, narratives, plots, click-streams and verdicts."""

from lakelens.serve.app import ReviewApp, create_app

__all__ = ["ReviewApp", "create_app"]
