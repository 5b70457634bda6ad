"""What the web handlers share, and the one thing in the web process that is bound late: the resources
exist only while the server runs."""

from __future__ import annotations

from collections.abc import Callable

from zaptrix.clients import Clients
from zaptrix.kafka.producer_startup import BackgroundProducer
from zaptrix.settings import GrpcClientSettings, KafkaSettings

from meta_ingress.credentials import CredentialsCache
from meta_ingress.graph.client import GraphClient
from meta_ingress.settings import WebSettings

SERVICE = "meta-ingress"


class WebResources:
    """The gRPC clients, the credentials cache, the Graph client and the producer (started in the
    background). Built on the server's event loop, which the gRPC channels and the producer belong to."""

    def __init__(
        self, settings: WebSettings, kafka: KafkaSettings, grpc_settings: GrpcClientSettings
    ) -> None:
        self.clients = Clients(grpc_settings)
        self.credentials = CredentialsCache(self.clients, settings)
        self.graph = GraphClient(settings)
        self.producer = BackgroundProducer(kafka, SERVICE)
        self.producer.start()

    async def close(self) -> None:
        await self.producer.stop()
        await self.graph.aclose()
        await self.clients.close()


class Lifetime:
    """The resources of the running server: opened in before_server_start, closed after the server stops.
    Handlers are built with the Lifetime and read ``resources`` per request; Sanic routes no request before
    before_server_start has run."""

    def __init__(self, open_resources: Callable[[], WebResources]) -> None:
        self._open = open_resources
        self._resources: WebResources | None = None

    @property
    def resources(self) -> WebResources:
        if self._resources is None:
            raise RuntimeError("the web resources are not open (before_server_start has not run)")
        return self._resources

    async def start(self) -> None:
        self._resources = self._open()

    async def stop(self) -> None:
        resources, self._resources = self._resources, None
        if resources is not None:
            await resources.close()
