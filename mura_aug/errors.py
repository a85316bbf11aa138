"""The one exception type for mistakes a user can make and fix.

A UserError's message names the thing that is wrong and says what to do. The CLI prints it
without a traceback; notebooks show it as the cell's error.
"""


class UserError(Exception):
    """A problem the user caused and can fix (wrong path, bad parameter, missing snapshot, full disk)."""

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}\n  What to do: {fix}" if fix else problem)
