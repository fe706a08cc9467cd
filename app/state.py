"""What the lifespan hands every request: the shared objects of one hub process."""

from __future__ import annotations

from typing import TypedDict

from progress_hub.fanout import Fanout
from progress_hub.settings import Settings
from pubsub.broker import Broker
from pubsub.store import JobStore


class HubState(TypedDict):
    """Lifespan state, read in routes as `request.state.<name>`."""

    settings: Settings
    broker: Broker
    store: JobStore
    fanout: Fanout
