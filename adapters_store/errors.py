"""What can go wrong, in the words of the domain: no HTTP here.

Every layer raises these; `service/errors.py` is the one table that turns each class into a
status, an error type and a default code. `code` names the precise case for clients
(`corpus_not_found`, `gate_failed`, …); `param` names the offending field.
"""


class GraftError(Exception):
    default_code = "error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after_s: int | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.retry_after_s = retry_after_s


class Invalid(GraftError):
    """The request names or shapes something wrongly (bad field, unknown reference in a body)."""
    default_code = "invalid_parameter"


class NotFound(GraftError):
    """The thing the path names does not exist (or is not visible to the caller)."""
    default_code = "not_found"


class Conflict(GraftError):
    """The request is well formed but clashes with the current state."""
    default_code = "conflict"


class TooLarge(GraftError):
    default_code = "too_large"


class Unsupported(GraftError):
    """A media type or file kind graft does not take."""
    default_code = "unsupported_media_type"


class Unauthenticated(GraftError):
    default_code = "invalid_api_key"


class Forbidden(GraftError):
    default_code = "insufficient_scope"


class Unavailable(GraftError):
    """A dependency (an engine, the base model's files) is not there now; retrying may work."""
    default_code = "unavailable"


class RateLimited(GraftError):
    """A key or tenant used its share; `retry_after_s` says when to try again."""
    default_code = "rate_limit_exceeded"
