"""Domain errors: each carries the HTTP status an endpoint answers and one sentence."""


class FleetError(Exception):
    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidInput(FleetError):
    status = 400


class NotAuthenticated(FleetError):
    status = 401


class Forbidden(FleetError):
    status = 403


class Conflict(FleetError):
    status = 409


class PayloadTooLarge(FleetError):
    status = 413


class TooManyRequests(FleetError):
    status = 429

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailable(FleetError):
    """The server is saturated or a service it needs is down: the client retries later."""

    status = 503

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after
