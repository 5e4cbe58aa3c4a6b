"""The backbone families: one package each (see :mod:`bbx.family`), discovered by
:mod:`bbx.registry`. Importing a family package imports no torch; its ``model`` module does."""
