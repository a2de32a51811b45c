"""The project's one error family. Messages say what was expected and what was found."""


class AnimateDiffError(Exception):
    """Base error: message says what was expected and what was found."""


class CheckpointError(AnimateDiffError):
    """A checkpoint file is missing, truncated, unsafe, or not in a recognized layout."""


class VideoError(AnimateDiffError):
    """A video could not be read, decoded or written."""


class ConfigError(AnimateDiffError):
    """A configuration value or input row is invalid."""
