"""What the web process's handlers share (Kafka producer, gRPC clients, REST client, caches, install guard).

Built in before_server_start, whole: the gRPC channels belong to the server's event loop."""

from __future__ import annotations

from zaptrix.clients import Clients
from zaptrix.kafka import Flow, topics_for
from zaptrix.kafka.producer_startup import BackgroundProducer
from zaptrix.settings import GrpcClientSettings, KafkaSettings

from bitrix_ingress.bitrix_rest.egress import portal_rest
from bitrix_ingress.bitrix_rest.pacing import PacerRegistry
from bitrix_ingress.bitrix_rest.portal import PortalClient
from bitrix_ingress.deps import Deps
from bitrix_ingress.operator_chats import ChatKeys, chat_key_cache
from bitrix_ingress.settings import WebSettings
from bitrix_ingress.web.install_guard import InstallGuard
from bitrix_ingress.web.verification import Verifications


class WebResources:
    def __init__(
        self, settings: WebSettings, kafka: KafkaSettings, grpc_settings: GrpcClientSettings
    ) -> None:
        self.settings = settings
        self.kafka = kafka
        self.topic = topics_for(Flow.B24_TO_WA, kafka.topic_prefix).main
        self.producer = BackgroundProducer(kafka, client_id="bitrix-ingress-web")
        self.clients = Clients(grpc_settings)
        self.deps = Deps(self.clients)
        self.rest = portal_rest(settings, timeout_s=min(settings.bitrix_rest_timeout_s, 20.0))
        self.pacers = PacerRegistry(settings.rate_for)
        self.portals = PortalClient(self.deps, self.rest, self.pacers, settings, attempts=2)
        self.guard = InstallGuard(settings)
        # token-keeper's verdicts on events' application tokens, and the last ones for its outages
        self.verifications = Verifications(self.deps, settings)
        self.chat_keys: ChatKeys = chat_key_cache()

    async def stop(self) -> None:
        await self.producer.stop()
        await self.rest.aclose()
        await self.guard.oauth.aclose()
        await self.clients.close()
