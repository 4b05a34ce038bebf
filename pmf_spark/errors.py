"""Errors that are the user's to fix: the job prints them as one line and exits 2."""


class PMFUserError(Exception):
    """Bad input, configuration or parameter. The message is shown as is."""


class ConfigError(PMFUserError):
    """A parameter or configuration value is invalid; the message names it."""


class InputDataError(PMFUserError):
    """The ratings input is malformed; the message names file, column and value."""
