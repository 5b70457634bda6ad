"""Baseline for the ingress benchmark: a bare Sanic endpoint in the same single-process mode as
meta-ingress-web (one worker, access log off), POST that reads the body and answers 200 with a small
JSON body like meta-ingress does. What meta-ingress adds on top of this is the cost of our handler.

    python -m bench.bare_sanic --port 18080
"""

from __future__ import annotations

import argparse

from sanic import HTTPResponse, Request, Sanic
from sanic import json as json_response


def create_app() -> Sanic:  # type: ignore[type-arg]
    app: Sanic = Sanic("bare_sanic")  # type: ignore[type-arg]
    app.config.ACCESS_LOG = False
    app.config.MOTD = False
    app.config.KEEP_ALIVE_TIMEOUT = 75

    @app.post("/webhooks/meta")
    async def receive(request: Request) -> HTTPResponse:
        body = request.body or b""
        return json_response({"events": 1 if body else 0})

    @app.get("/health")
    async def health(request: Request) -> HTTPResponse:
        return json_response({"status": "ok"})

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    create_app().run(host="127.0.0.1", port=args.port, single_process=True, access_log=False, motd=False)


if __name__ == "__main__":
    main()
