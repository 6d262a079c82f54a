"""Profile one scenario with pyinstrument: ``python -m benchmarks.profile wide 10000 strict``.

Arguments: the shape (``wide``, ``chain`` or ``diamond``), the number of tasks, and the
journal (``memory``, ``strict`` or ``batched``: SQLite with that durability). The flow
runs once to warm up, then once under the profiler; the text report goes to stdout
(``--html PATH`` writes pyinstrument's HTML page as well). pyinstrument is not a
dependency of aioflow: ``pip install pyinstrument`` into the venv first.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from . import _scenarios

SHAPES = {
    "wide": _scenarios.wide_flow,
    "chain": _scenarios.chain_flow,
    "diamond": _scenarios.diamond_flow,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    parser.add_argument("shape", choices=list(SHAPES))
    parser.add_argument("n", type=int)
    parser.add_argument("journal", choices=list(_scenarios.JOURNALS))
    parser.add_argument("--html", type=Path, help="also write pyinstrument's HTML report here")
    parser.add_argument("--interval", type=float, default=0.0005, help="sampling interval (s)")
    args = parser.parse_args(argv)
    try:
        from pyinstrument import Profiler
    except ImportError:
        raise SystemExit("pyinstrument is not installed: pip install pyinstrument") from None

    cfg = _scenarios.Config(repeat=1)
    make = SHAPES[args.shape]

    async def once(profiler: Profiler | None) -> float:
        flow = make(args.n)
        async with _scenarios.engine_for(args.journal, cfg) as engine:
            if profiler is not None:
                profiler.start()
            try:
                return await _scenarios.run_flow(engine, flow)
            finally:
                if profiler is not None:
                    profiler.stop()

    asyncio.run(once(None))
    profiler = Profiler(interval=args.interval, async_mode="disabled")
    seconds = asyncio.run(once(profiler))
    print(f"{args.shape} {args.n} on {args.journal}: {seconds / args.n * 1e6:.1f} us/task")
    print(profiler.output_text(unicode=True, color=False, show_all=False))
    if args.html is not None:
        args.html.write_text(profiler.output_html())


if __name__ == "__main__":
    main()
