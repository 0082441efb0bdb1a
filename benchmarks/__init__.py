"""Benchmarks of turso.lib_sync_aio against pyturso's own asyncio sync module and the blocking driver.

Run with `make bench` (or `python -m benchmarks`, `--smoke` for a quick run). See benchmarks/__main__.py.
"""
