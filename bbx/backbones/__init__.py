"""Backbone families, one per file; :mod:`bbx.registry` maps ``model_type`` to them."""
