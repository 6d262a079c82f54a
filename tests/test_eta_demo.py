"""The ETA follows the pace of the run at hand: the demo, run three times fast and once
twice as slow (``AIOFLOW_DEMO_SPEED``), is estimated at its own pace once it is well on.

Before the ETA weighed the run's own pace, the slow run's estimate at the start of the
upload was about half the time that was actually left (the history said the steps were
quick); the bound below fails that.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

import aioflow
from aioflow import _demo

pytestmark = pytest.mark.anyio


async def test_a_slower_run_than_its_history_is_estimated_at_its_own_pace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = {"volume": "vol-1", "size": _demo.VOLUME_BYTES}
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    async with aioflow.Engine(url) as engine:
        monkeypatch.setenv(_demo.SPEED_ENV, "10")
        for _ in range(3):  # the history: three quick runs
            await engine.run(_demo.REFERENCE, inputs)
        monkeypatch.setenv(_demo.SPEED_ENV, "5")  # this run is twice as slow
        handle = await engine.start(_demo.REFERENCE, inputs)
        eta = at = None
        with anyio.fail_after(30):
            while at is None:  # as the upload starts (the copy, most of the flow, is done)
                report = await engine.progress(handle.flow_id)  # with the flow's history
                if report.atoms["upload"].state == "RUNNING":
                    eta, at = report.eta, time.monotonic()
                await anyio.sleep(0.005)
        outcome = await handle.wait()
        ended = time.monotonic()
    assert outcome.status is aioflow.FlowStatus.SUCCESS
    assert eta is not None and at is not None
    left = ended - at
    assert 0.65 * left <= eta <= 1.6 * left, (eta, left)
