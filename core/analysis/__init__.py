"""Layer 2, analysis: from per-example records to numbers, diagnostics, checks and typed rows.

``records`` (the per-example record), ``scoring`` (records of an attack's examples),
``metrics`` (``@metric`` declarations), ``diagnostics`` (what a cell measures while it
runs), ``checks`` (``@check`` sanity checks over finished rows) and ``rows`` (``CellRow``).
"""
