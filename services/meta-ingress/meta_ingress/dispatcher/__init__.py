"""meta-dispatcher: operator events from Kafka to the WhatsApp Graph API."""
