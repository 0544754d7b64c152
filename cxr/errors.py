"""The errors a user can fix: stages print their message instead of a traceback."""


class PipelineError(Exception):
    """A problem in params, data, weights or checkpoints; the message names it and the fix."""


class ConfigError(PipelineError, ValueError):
    """params.yaml is missing, unreadable or holds a bad value; the message names the key."""
