"""Listeners shipped with aioflow."""

from __future__ import annotations

from typing import Any

from ._events import Event
from ._log import get_logger
from ._states import AtomState, FlowStatus

_FAILED = frozenset({AtomState.FAILURE, AtomState.REVERT_FAILURE, FlowStatus.FAILED})


class StructlogListener:
    """Logs every event through structlog, with the flow id and atom bound.

    Progress events are logged at debug level; failures (an atom in FAILURE or
    REVERT_FAILURE, a flow FAILED, a cancel) at error level with the exception's type
    and message (``error_type``, ``error``); everything else at info.
    """

    def __init__(self, logger: Any = None, *, event: str = "aioflow.event") -> None:
        self._log = logger if logger is not None else get_logger("aioflow.events")
        self._event = event

    def __call__(self, event: Event) -> None:
        log = self._log.bind(flow_id=event.flow_id, atom=event.atom)
        fields: dict[str, Any] = {"kind": event.kind.value, "seq": event.seq}
        if event.state is not None:
            fields["state"] = event.state.value
        if event.attempt:
            fields["attempt"] = event.attempt
        if event.progress is not None:
            fields["progress"] = event.progress
        failure = event.details.get("failure") or event.details.get("cancel")
        if event.kind.value == "PROGRESS":
            log.debug(self._event, **fields)
        elif isinstance(failure, dict) or event.state in _FAILED:
            if isinstance(failure, dict):
                fields["error_type"] = str(failure.get("exc_type", ""))
                fields["error"] = str(failure.get("message", ""))
            log.error(self._event, **fields)
        else:
            log.info(self._event, **fields)
