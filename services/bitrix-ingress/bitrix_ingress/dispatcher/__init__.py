"""bitrix-dispatcher (console script, process.main): wa-to-b24 events out to Bitrix24 Open Lines."""
