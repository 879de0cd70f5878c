"""The evaluator's input errors: bad suites, model references or accuracy tables.

Commands catch :class:`EvalInputError` and print its message (no traceback): these are mistakes in
what the user passed, and the message says which file or key to fix.
"""


class EvalInputError(ValueError):
    """Base class of the evaluator's user-input errors."""
