"""Task models that carry a backbone, one module each (``<name>.py``, torch-free, exporting
``TASK``) with its catalog beside it (``<name>.json``); :mod:`bbx.registry` discovers them. See
:mod:`bbx.task` for what a module declares."""
