"""Errors a user can act on; the CLI prints them as one line instead of a trace."""


class BrandlensError(Exception):
    """Base class of errors that carry a complete, user-facing message."""


class BackboneUnavailable(BrandlensError):
    """A backbone's weights cannot be had here (offline, missing file or package)."""


class ArtifactError(BrandlensError):
    """An artifact directory is missing, incomplete or of an unknown format."""


class ConfigError(BrandlensError):
    """The command line or a configuration value is invalid."""
