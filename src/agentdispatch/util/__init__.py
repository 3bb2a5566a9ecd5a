"""General utilities used by every layer: the injectable clock and the background-task owner.

Standard library only; beside `protocol`, not inside it (neither imports the other).
"""

from .clock import SYSTEM_CLOCK, Clock, SystemClock
from .tasks import TaskSet

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock", "TaskSet"]
