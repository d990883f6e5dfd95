"""Report: a run's figures, `report.html` and `report.md`.

Sections, the sandboxed HTML and escaped Markdown rendering, the overview
and learning curves (`reports`), and the figures (`plots`). The task whose
sections a report adds is passed in, never imported. Imports: `dltool.core`
only (matplotlib inside `plots`).
"""
