"""Upload ingress: check images, store them in the blob store, publish one task per image.

The Python API lives here (the kernel ``pixfleet`` imports no broker): ``from producer import
Client`` - see :mod:`producer.client`. ``Task`` and ``Result`` are the kernel's wire models.
"""

from pixfleet.envelope import Output, Result, Task
from pixfleet.records import TaskState
from producer.client import Client, TaskHandle
from producer.outputs import TaskNotFound

__all__ = ["Client", "Output", "Result", "Task", "TaskHandle", "TaskNotFound", "TaskState"]
