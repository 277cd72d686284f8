"""Pictures: what a person looks at.

Labelled image grids (``grids``), what a strength sweep renders (``sweep``), the warnings it gives
(``sweep_warnings``), its scores and recommended strength (``recommend``), the loss curve and the sweep's
score plot (``plots``) and the dataset's contact sheet (``contact_sheet``).

May use: data.
"""
