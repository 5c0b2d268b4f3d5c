"""The embedded tasks of the tiny runs, their tiny model and its supervised warm start."""
