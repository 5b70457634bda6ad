"""What the web handlers share (through a zaptrix.lifetime.Lifetime: they exist only while the server runs)."""

from __future__ import annotations

from zaptrix.clients import Clients
from zaptrix.kafka.producer_startup import BackgroundProducer
from zaptrix.lifetime import Lifetime as _Lifetime
from zaptrix.settings import GrpcClientSettings, KafkaSettings

from meta_ingress.credentials import CredentialsCache
from meta_ingress.graph.client import GraphClient
from meta_ingress.settings import WebSettings
from meta_ingress.web.confirmations import Confirmations

SERVICE = "meta-ingress"


class WebResources:
    """The gRPC clients, the credentials cache, the Graph client, the producer (started in the background)
    and the recorder of send confirmations. Built on the server's event loop, which the gRPC channels and the producer belong to."""

    def __init__(
        self, settings: WebSettings, kafka: KafkaSettings, grpc_settings: GrpcClientSettings
    ) -> None:
        self.clients = Clients(grpc_settings)
        self.credentials = CredentialsCache(self.clients, settings)
        self.graph = GraphClient(settings)
        self.producer = BackgroundProducer(kafka, SERVICE)
        self.producer.start()
        self.confirmations = Confirmations(self.clients)

    async def close(self) -> None:
        await self.confirmations.aclose()
        await self.producer.stop()
        await self.graph.aclose()
        await self.clients.close()


# The handlers get the resources through a Lifetime: they exist only while the server runs.
Lifetime = _Lifetime[WebResources]
