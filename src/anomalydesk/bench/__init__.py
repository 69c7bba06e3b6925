"""`anomalydesk bench`: measured throughput and latency, each beside a ceiling measured in the same run.

Each part is a module with `run(quick: bool, redis_url: str | None) -> dict`. Without `--redis` the
benchmarks start a throwaway redis-server of their own (`bench.server.throwaway`), never the user's.
"""
