"""Small shared Sanic helpers."""

from __future__ import annotations

from types import SimpleNamespace

from sanic import Sanic
from sanic.config import Config

App = Sanic[Config, SimpleNamespace]


def new_app(name: str) -> App:
    app: App = Sanic(name)
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.ACCESS_LOG = False
    return app
