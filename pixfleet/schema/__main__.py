"""Regenerate the checked-in JSON Schemas: ``python -m pixfleet.schema``."""

from pixfleet.schema import write_all

for path in write_all():
    print(path)
