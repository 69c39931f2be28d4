"""One module per command of the ``alignkit`` tool: the only code that wires the library's layers together.

``cli.py`` parses arguments and prints; each command here reads a recipe or run folder, calls the layers
below (data, models, train, online, eval, report) and returns what it did.
"""

__all__: list[str] = []
