"""User-facing errors.

Every error veil raises on bad input is a :class:`VeilError` whose message is one full sentence
saying what was wrong and what to do. The command line prints that sentence (no traceback) and
exits with a non-zero status.
"""


class VeilError(Exception):
    """Bad input or state the user can fix; the message says how."""


class TrainingDiverged(VeilError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
