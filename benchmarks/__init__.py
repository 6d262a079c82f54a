"""aioflow's benchmark suite: ``python -m benchmarks`` (see ``benchmarks/README.md``).

Each scenario times aioflow on the memory journal and on SQLite (``strict`` and
``batched`` durability) next to a plain-asyncio floor measured in the same run, and,
when they can be installed, next to TaskFlow and DBOS run in their own virtual
environments. Results are medians of several samples, printed as a table and written
as JSON.
"""
