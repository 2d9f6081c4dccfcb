"""The server's Prometheus metrics (``GET /metrics``), with their own registry per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Seconds; CPU decoding of small models sits in the milliseconds, prefill of long prompts in seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("arlm_requests", "Requests finished, by route and outcome", ["route", "status"], registry=r)
        self.running = Gauge("arlm_requests_running", "Sequences decoding now (KV slots in use)", registry=r)
        self.waiting = Gauge("arlm_requests_waiting", "Requests waiting for a slot", registry=r)
        self.slots_used = Gauge("arlm_kv_slots_in_use", "KV-cache slots in use", registry=r)
        self.slots = Gauge("arlm_kv_slots", "KV-cache slots in all", registry=r)
        self.generated = Counter("arlm_generated_tokens", "Tokens generated", registry=r)
        self.prompt = Counter("arlm_prompt_tokens", "Prompt tokens received", registry=r)
        self.prefix_hits = Gauge("arlm_prefix_cache_hits", "Prompt chunks copied from the prefix cache (total)", registry=r)
        self.prefix_queries = Gauge("arlm_prefix_cache_queries", "Prompt chunks looked up in the prefix cache (total)",
                                    registry=r)
        self.ttft = Histogram("arlm_time_to_first_token_seconds", "From a request's arrival to its first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("arlm_inter_token_latency_seconds", "Between two tokens of one sequence",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.rejected = Counter("arlm_requests_rejected", "Requests refused because the queue was full", registry=r)
        self.aborted = Counter("arlm_requests_aborted", "Requests cancelled by a client disconnecting", registry=r)

    def render(self, stats: dict | None) -> tuple[bytes, str]:
        if stats:
            self.running.set(stats["running"])
            self.waiting.set(stats["waiting"])
            self.slots_used.set(stats["running"])
            self.slots.set(stats["slots"])
            self.prefix_hits.set(stats["prefix_hits"])
            self.prefix_queries.set(stats["prefix_queries"])
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
