"""The one exception a stage raises for a problem the user can fix; the CLI prints it."""


class BuildError(Exception):
    """A clear, user-facing failure: the message says what is wrong and what to change."""
