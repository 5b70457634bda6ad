"""bitrix-ingress-web (console script, app.main): the operator's events, app install and the settings page in."""
