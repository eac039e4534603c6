"""Stage 6, report: a finished run read back, its figures, and report/ (HTML, Markdown, TensorBoard images)."""
