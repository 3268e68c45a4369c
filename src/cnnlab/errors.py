"""Errors a user can cause. The CLI prints them as one line and exits non-zero, without a traceback."""


class CnnlabError(Exception):
    """Something the user can fix: the message says what is wrong, where, and how to fix it."""

    exit_code = 2


class DataError(CnnlabError):
    """A dataset is missing, unreadable or malformed."""


class ConfigError(CnnlabError):
    """A recipe, flag or override has a bad value."""
