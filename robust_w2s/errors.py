"""The one exception type for bad input: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Bad input from the user (a path, a spec, a config key): not a bug in robust-w2s."""
