"""Server metrics in the Prometheus text format (``GET /metrics``), without a client library.

Counters: requests by endpoint and status, prompt/completion tokens, errors by type; a latency
histogram per endpoint; gauges for the queue depth and requests generating now. Generation requests
are also counted per served model name (``model`` label: ``bundle`` or ``bundle:adapter``), so a server
holding several adapters shows requests and tokens per adapter.
"""

from __future__ import annotations

import threading
from collections import defaultdict

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, float("inf"))


def _labels(**kv: str) -> str:
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in kv.items())
    return "{" + inner + "}" if inner else ""


class Metrics:
    """Thread-safe counters; ``render()`` is the ``/metrics`` body."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.tokens: dict[str, int] = defaultdict(int)
        self.hist: dict[str, list[int]] = {}
        self.hist_sum: dict[str, float] = defaultdict(float)
        self.model_requests: dict[tuple[str, int], int] = defaultdict(int)
        self.model_tokens: dict[tuple[str, str], int] = defaultdict(int)
        self.queue_depth = 0
        self.active = 0

    def observe(self, endpoint: str, status: int, seconds: float, prompt_tokens: int = 0,
                completion_tokens: int = 0, error: str | None = None, model: str | None = None) -> None:
        with self._lock:
            if model is not None:
                self.model_requests[(model, status)] += 1
                self.model_tokens[(model, "prompt")] += prompt_tokens
                self.model_tokens[(model, "completion")] += completion_tokens
            self.requests[(endpoint, status)] += 1
            counts = self.hist.setdefault(endpoint, [0] * len(BUCKETS))
            for i, b in enumerate(BUCKETS):
                if seconds <= b:
                    counts[i] += 1
            self.hist_sum[endpoint] += seconds
            self.tokens["prompt"] += prompt_tokens
            self.tokens["completion"] += completion_tokens
            if error:
                self.errors[error] += 1

    def render(self) -> str:
        with self._lock:
            out = ["# HELP llmlab_requests_total Requests answered, by endpoint and HTTP status.",
                   "# TYPE llmlab_requests_total counter"]
            out += [f"llmlab_requests_total{_labels(endpoint=e, status=str(s))} {n}"
                    for (e, s), n in sorted(self.requests.items())]
            out += ["# HELP llmlab_request_latency_seconds Time from request to last byte.",
                    "# TYPE llmlab_request_latency_seconds histogram"]
            for e, counts in sorted(self.hist.items()):
                for b, n in zip(BUCKETS, counts):
                    le = "+Inf" if b == float("inf") else repr(b)
                    out.append(f"llmlab_request_latency_seconds_bucket{_labels(endpoint=e, le=le)} {n}")
                out.append(f"llmlab_request_latency_seconds_sum{_labels(endpoint=e)} {self.hist_sum[e]:.6f}")
                out.append(f"llmlab_request_latency_seconds_count{_labels(endpoint=e)} {counts[-1]}")
            out += ["# HELP llmlab_tokens_total Tokens processed, by type (prompt, completion).",
                    "# TYPE llmlab_tokens_total counter"]
            out += [f"llmlab_tokens_total{_labels(type=t)} {self.tokens[t]}" for t in ("prompt", "completion")]
            out += [("# HELP llmlab_model_requests_total Generation requests, by served model (bundle or "
                     "bundle:adapter) and HTTP status."), "# TYPE llmlab_model_requests_total counter"]
            out += [f"llmlab_model_requests_total{_labels(model=m, status=str(s))} {n}"
                    for (m, s), n in sorted(self.model_requests.items())]
            out += ["# HELP llmlab_model_tokens_total Tokens processed, by served model and type.",
                    "# TYPE llmlab_model_tokens_total counter"]
            out += [f"llmlab_model_tokens_total{_labels(model=m, type=t)} {n}"
                    for (m, t), n in sorted(self.model_tokens.items())]
            out += ["# HELP llmlab_errors_total Failed requests, by error type.", "# TYPE llmlab_errors_total counter"]
            out += [f"llmlab_errors_total{_labels(type=t)} {n}" for t, n in sorted(self.errors.items())]
            out += ["# HELP llmlab_queue_depth Requests waiting for the model.", "# TYPE llmlab_queue_depth gauge",
                    f"llmlab_queue_depth {self.queue_depth}",
                    "# HELP llmlab_requests_active Requests generating now.", "# TYPE llmlab_requests_active gauge",
                    f"llmlab_requests_active {self.active}"]
            return "\n".join(out) + "\n"


def parse(text: str) -> dict[str, float]:
    """``/metrics`` text as {'name{labels}': value} (for tests, the app page and benchmarks)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out
