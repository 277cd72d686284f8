"""Pictures: what a person looks at.

Labelled image grids (``grids``), what a strength sweep renders (``sweep``) and the warnings it gives
(``sweep_warnings``), the loss curve (``plots``) and the dataset's contact sheet (``contact_sheet``).

May use: data.
"""
