"""aioflow: durable, resumable, observable workflows for asyncio.

Define tasks, compose them into flows, run them with an :class:`Engine` that records
every step in a journal and resumes a flow after a crash without redoing finished work.
"""

from __future__ import annotations

from ._compile import ExecGraph as ExecGraph
from ._compile import compile_flow as compile_flow
from ._engine import Engine as Engine
from ._engine import FlowHandle as FlowHandle
from ._errors import AioflowError as AioflowError
from ._errors import AmbiguousError as AmbiguousError
from ._errors import DeadlineExceededError as DeadlineExceededError
from ._errors import ExternalTimeoutError as ExternalTimeoutError
from ._errors import FlowBusyError as FlowBusyError
from ._errors import FlowCancelledError as FlowCancelledError
from ._errors import FlowFailedError as FlowFailedError
from ._errors import FlowMismatchError as FlowMismatchError
from ._errors import InvalidFlowError as InvalidFlowError
from ._errors import InvalidTokenError as InvalidTokenError
from ._errors import JournalError as JournalError
from ._errors import LeaseLostError as LeaseLostError
from ._errors import MissingInputsError as MissingInputsError
from ._errors import NotFoundError as NotFoundError
from ._errors import SerializationError as SerializationError
from ._events import Event as Event
from ._events import EventKind as EventKind
from ._failure import Failure as Failure
from ._flow import Checkpoint as Checkpoint
from ._flow import Flow as Flow
from ._flow import Graph as Graph
from ._flow import Linear as Linear
from ._flow import Unordered as Unordered
from ._handles import External as External
from ._handles import Progress as Progress
from ._handles import TaskContext as TaskContext
from ._listeners import StructlogListener as StructlogListener
from ._map import Map as Map
from ._outcome import AtomOutcome as AtomOutcome
from ._outcome import Outcome as Outcome
from ._progress import AtomProgress as AtomProgress
from ._progress import FlowProgress as FlowProgress
from ._registry import Registry as Registry
from ._registry import RegistryEntry as RegistryEntry
from ._retry import Retry as Retry
from ._states import AtomState as AtomState
from ._states import FlowStatus as FlowStatus
from ._task import Task as Task
from ._task import task as task
from ._waits import Receive as Receive
from ._waits import Sleep as Sleep
from .jobs import Conductor as Conductor
from .jobs import Job as Job
from .jobs import JobBoard as JobBoard
from .jobs import JobState as JobState
from .journal import Journal as Journal
from .journal import open_journal as open_journal

__version__ = "0.1.0.dev0"

__all__ = [
    "AioflowError",
    "AmbiguousError",
    "AtomOutcome",
    "AtomProgress",
    "AtomState",
    "Checkpoint",
    "Conductor",
    "DeadlineExceededError",
    "Engine",
    "Event",
    "EventKind",
    "ExecGraph",
    "External",
    "ExternalTimeoutError",
    "Failure",
    "Flow",
    "FlowBusyError",
    "FlowCancelledError",
    "FlowFailedError",
    "FlowHandle",
    "FlowMismatchError",
    "FlowProgress",
    "FlowStatus",
    "Graph",
    "InvalidFlowError",
    "InvalidTokenError",
    "Job",
    "JobBoard",
    "JobState",
    "Journal",
    "JournalError",
    "LeaseLostError",
    "Linear",
    "Map",
    "MissingInputsError",
    "NotFoundError",
    "Outcome",
    "Progress",
    "Receive",
    "Registry",
    "RegistryEntry",
    "Retry",
    "SerializationError",
    "Sleep",
    "StructlogListener",
    "Task",
    "TaskContext",
    "Unordered",
    "compile_flow",
    "open_journal",
    "task",
]
