"""Local stand-ins for the WhatsApp Cloud (Graph) API and Bitrix24 REST/OAuth.

They follow the documented contracts (see docs/sandbox.md) so that tests and `make run`
never talk to Meta or Bitrix24.
"""
