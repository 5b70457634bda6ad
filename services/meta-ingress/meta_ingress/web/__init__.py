"""meta-ingress-web: Meta's webhooks in (to Kafka), the signed media proxy out (what Bitrix24 downloads)."""
