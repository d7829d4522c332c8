"""Errors that mpoxscan raises for bad input; each message names the problem and the fix."""


class MpoxscanError(Exception):
    """Base class of every error mpoxscan raises on purpose."""

    #: A stable, machine-readable code (the web API returns it as ``code``).
    code: str = "error"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        """The human-readable message."""
        return str(self.args[0]) if self.args else ""


class InvalidImageError(MpoxscanError, ValueError):
    """An upload or file is not an image mpoxscan can read (or is outside the limits)."""

    code = "invalid_image"


class BundleError(MpoxscanError, ValueError):
    """A model bundle is missing, incomplete, tampered with or of an unknown format."""

    code = "bad_bundle"


class DatasetError(MpoxscanError, ValueError):
    """A dataset folder does not have a layout mpoxscan understands."""

    code = "bad_dataset"


class NotFittedError(MpoxscanError, ValueError, AttributeError):
    """An estimator was used before ``fit``."""

    code = "not_fitted"


class InvalidAnswersError(MpoxscanError, ValueError):
    """Questionnaire answers name an unknown question or give a value it does not allow."""

    code = "invalid_answers"


class RuleSetError(MpoxscanError, ValueError):
    """A questionnaire rule file is malformed or refers to unknown questions or sources."""

    code = "bad_rule_set"
