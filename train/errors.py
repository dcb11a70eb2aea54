"""The one exception type for mistakes a user can fix (a bad flag, a missing file, a refused resume).

`python -m train.run` prints it as one line and exits with 2; anything else is a bug and keeps its traceback.
"""


class UsageError(Exception):
    """A bad flag, a missing or unfit file: printed as one line by train.run, exit code 2."""
