"""The model's input error, in a module of its own so that importing it loads no model (the CLI
catches it at start-up)."""
from __future__ import annotations


class InputError(ValueError):
    """Bad input: one line naming where it is and what was expected."""

    def __init__(self, source: str, message: str, document: int | None = None, what: str = "", path: str = ""):
        self.source, self.document, self.what, self.path, self.message = source, document, what, path, message
        where = source
        if document is not None:
            where += f": document {document}"
        if what:
            where += f" ({what})"
        super().__init__(f"{where}: {path + ': ' if path else ''}{message}")
