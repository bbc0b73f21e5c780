"""Errors raised for user mistakes; the CLI prints their one-line message and exits with status 2."""


class UserError(Exception):
    """A mistake the user can fix (bad path, unknown name, missing weights); never a bug in textseg."""


class MissingWeightsError(UserError):
    """A pretrained weight file could not be found locally nor downloaded."""


class DatasetError(UserError):
    """A dataset file or folder is missing or malformed."""


class ConfigError(UserError):
    """A configuration file or field is invalid."""
