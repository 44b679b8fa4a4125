"""The cli box: the ``gpux`` command (Typer + Rich). Commands import the engine lazily."""
