"""The events of every node on every node's `/api/events`: each event is delivered to this node's
listeners at once and published on `<p>:events`; the other nodes deliver it to theirs."""

from __future__ import annotations

import json

from redis.asyncio.client import Pipeline

from server.cluster.link import RedisLink
from server.control.events import Event, EventHub, event_message


class ClusterEvents(EventHub):
    def __init__(self, link: RedisLink, instance: str) -> None:
        super().__init__()
        self._link = link
        self._instance = instance
        self._channel = link.key("events")
        link.subscribe(self._channel, self._received)

    def publish(self, event: Event) -> None:
        message = event_message(event)
        self.deliver(message)
        envelope = json.dumps({"origin": self._instance, "event": message})

        def write(pipe: Pipeline) -> None:
            pipe.publish(self._channel, envelope)

        self._link.send(write)

    def _received(self, data: str) -> None:
        envelope = json.loads(data)
        if envelope.get("origin") != self._instance:
            self.deliver(str(envelope["event"]))
