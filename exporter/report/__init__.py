"""bench: one-shot benchmark report (statistics, Markdown, plots, system info)."""
