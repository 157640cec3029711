"""The one error the services raise for a request they refuse; the API turns it into an
``ErrorOut`` with its status code, the dashboard into a message beside the field."""

from __future__ import annotations


class JobError(ValueError):
    """A request the service refuses; ``status`` is the HTTP code, ``field`` what is wrong."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message
