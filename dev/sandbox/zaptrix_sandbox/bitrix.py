"""`sandbox-bitrix`: run the Bitrix24 REST + OAuth stand-in."""

from __future__ import annotations

from .bitrix_app import create_app
from .bitrix_settings import BitrixSettings


def main() -> None:
    settings = BitrixSettings()
    app = create_app(settings)
    app.run(host=settings.host, port=settings.port, single_process=True, motd=False, access_log=False)


if __name__ == "__main__":
    main()
