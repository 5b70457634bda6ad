"""The connector settings page (the SETTING_CONNECTOR placement): bind, check, pause and resume WhatsApp
numbers of the portal's Open Line, replay its dead letters, connect or disconnect the line.

placement.py reads the placement POST, session.py signs the page's portal-bound session, view.py gathers
what the page shows, render.py writes it as HTML in the portal's language (i18n.py, locales/), line.py
switches the line in Bitrix24, handler.py answers the two routes. docs/bitrix-ingress.md and
docs/settings-page.md describe it; docs/security.md its authentication.
"""

from bitrix_ingress.web.settings_page.handler import SettingsPage
from bitrix_ingress.web.settings_page.render import ACTION_PATH

SETTINGS_PATH = "/webhooks/bitrix24/settings"

__all__ = ["ACTION_PATH", "SETTINGS_PATH", "SettingsPage"]
