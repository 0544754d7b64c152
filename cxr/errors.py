"""The base of every error a user can fix: stages print its message instead of a traceback."""


class PipelineError(Exception):
    """A problem in params, data, weights or checkpoints; the message names it and the fix."""
