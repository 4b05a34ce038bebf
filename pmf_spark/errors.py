"""Errors by kind. Each kind is one line for the person who ran the job and its own
exit code, so a scheduler can tell a typo from a numerical failure from a full disk:

======================  ====  ===========================================================
class                   exit  meaning
======================  ====  ===========================================================
:class:`PMFUserError`      2  bad input, configuration or parameter: the user's to fix
:class:`FitError`          3  fitting failed numerically; the message names the likely cause
:class:`OutputError`       4  writing or committing an output failed; names path and reason
:class:`Interrupted`     130  Ctrl-C / SIGTERM; the output was left as it was
======================  ====  ===========================================================

Anything else is a bug (exit 1, with a traceback).
"""


class PMFError(Exception):
    """Base of the errors a job reports as one line. The message is shown as is."""

    exit_code = 1


class PMFUserError(PMFError):
    """Bad input, configuration or parameter. The message is shown as is."""

    exit_code = 2


class ConfigError(PMFUserError):
    """A parameter or configuration value is invalid; the message names it."""


class InputDataError(PMFUserError):
    """The ratings input is malformed; the message names file, column and value."""


class FitError(PMFError):
    """Training failed numerically (e.g. non-finite factors); the message names the
    likely cause and a remedy."""

    exit_code = 3


class TrainingDiverged(FitError):
    """Factors became non-finite."""


class OutputError(PMFError):
    """An output or checkpoint could not be written or committed; the message names the
    path and the operating system's reason."""

    exit_code = 4


class Interrupted(PMFError):
    """The run was interrupted (SIGINT/SIGTERM)."""

    exit_code = 130
