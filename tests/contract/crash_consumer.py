"""Helper process: take one delivery of a group, report its task id, then die by SIGKILL.

Used by the contract suite to show that a consumer that dies holding a delivery loses nothing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from brokers import open_transport


async def main(url: str, group: str) -> None:
    async with open_transport(url) as transport:
        async for delivery in transport.consume(group, prefetch=1):
            sys.stdout.write(delivery.message.id + "\n")
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
