"""The tasks of the tiny runs (``base``: the ``Task`` interface; ``registry``: ``task.kind``; ``arithmetic``,
``chain``), their tiny model (``model``), its supervised warm start (``warm_start``) and the start-up difficulty
report (``report``)."""
