"""`sandbox-graph`: run the Graph API stand-in."""

from __future__ import annotations

from .graph_app import create_app
from .graph_settings import GraphSettings


def main() -> None:
    settings = GraphSettings()
    app = create_app(settings)
    app.run(host=settings.host, port=settings.port, single_process=True, motd=False, access_log=False)


if __name__ == "__main__":
    main()
