"""The fault suite (`make faults`, docs/faults.md): kills and freezes every component under load on both
flows and counts, from what the stand-ins recorded, what was lost and what arrived twice."""
