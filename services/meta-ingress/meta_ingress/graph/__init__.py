"""The WhatsApp Cloud (Graph) API: the HTTP client and what its errors mean."""
