"""The web handlers' resources exist only while the server runs: opened in before_server_start, closed
after the server stops, and never reached before or after."""

from __future__ import annotations

from typing import cast

import pytest
from meta_ingress.web.resources import Lifetime, WebResources


class FakeResources:
    def __init__(self) -> None:
        self.closes = 0

    async def close(self) -> None:
        self.closes += 1


async def test_resources_exist_only_between_start_and_stop() -> None:
    opened: list[FakeResources] = []

    def open_resources() -> WebResources:
        opened.append(FakeResources())
        return cast(WebResources, opened[-1])

    lifetime = Lifetime(open_resources)
    with pytest.raises(RuntimeError, match="not open"):
        _ = lifetime.resources
    assert opened == []  # nothing is built before the server's event loop runs

    await lifetime.start()
    assert lifetime.resources is cast(WebResources, opened[0])

    await lifetime.stop()
    assert opened[0].closes == 1
    with pytest.raises(RuntimeError, match="not open"):
        _ = lifetime.resources
    await lifetime.stop()  # a second stop (a failed start, a signal during shutdown) closes nothing twice
    assert opened[0].closes == 1
