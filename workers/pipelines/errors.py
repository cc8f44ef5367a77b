"""Errors the ML pipelines raise. No Django here: the tasks translate these into Job states."""


class PipelineInputError(Exception):
    """The input cannot be processed (bad settings, corrupt weights, wrong dataset).

    The message is shown to the user as the job's error, so it says what was wrong and what to do.
    """


class JobCancelled(Exception):
    """Raised by a progress callback when the user cancelled the job; pipelines let it propagate."""
