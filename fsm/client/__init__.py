"""A typed async client of the control plane's API (``docs/client.md``)."""

from fsm.client.api import ROUTES, ControlClient
from fsm.client.errors import ApiError, StreamGaveUp
from fsm.client.events import Event, EventStream, Retry
from fsm.control.views import CreateSessionBody, SessionDetail, SessionSummary
from fsm.wire.request_bodies import PromptBody

__all__ = [
    "ROUTES",
    "ApiError",
    "ControlClient",
    "CreateSessionBody",
    "Event",
    "EventStream",
    "PromptBody",
    "Retry",
    "SessionDetail",
    "SessionSummary",
    "StreamGaveUp",
]
