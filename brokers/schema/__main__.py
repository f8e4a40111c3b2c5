"""Regenerate the checked-in JSON Schemas: ``python -m brokers.schema``."""

from brokers.schema import write_all

for path in write_all():
    print(path)
