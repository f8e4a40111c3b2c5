"""pixfleet's kernel: what every side shares and the home of the public Python API.

The kernel imports none of ``brokers``, ``producer`` or ``consumers``; they all import it:

* :mod:`pixfleet.envelope` - the wire envelopes (:class:`Task`, :class:`Result`) and their JSON
  Schemas (:mod:`pixfleet.schema`);
* :mod:`pixfleet.errors` - one error hierarchy with stable codes
  (:mod:`pixfleet.images` holds the image limits and image errors);
* :mod:`pixfleet.settings` - where things live by default (data dir, broker and blob URLs);
* :mod:`pixfleet.blobs` - the blob-store protocol and its stores, chosen by URL;
* :mod:`pixfleet.runtime` - what both command-line entry points share.
"""

from __future__ import annotations

from pixfleet.envelope import BlobRef, Output, Result, Task
from pixfleet.errors import PixfleetError

__all__ = ["BlobRef", "Output", "PixfleetError", "Result", "Task"]
