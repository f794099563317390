"""LLM-as-judge: fake judges, a real HTTP endpoint (good, garbage, down) and the micro model as judge."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llmlab.evaluate.judge import EndpointJudge, JudgeUnavailable, ModelJudge, cohen_kappa, grade, judge_set, pairwise
from llmlab.serve.process import free_port


class FakeJudge:
    """Replies from a function of the prompt; counts the calls."""

    def __init__(self, reply, name: str = "fake"):
        self.reply, self.name, self.calls = reply, name, 0

    def ask(self, prompt: str) -> str:
        self.calls += 1
        return self.reply(prompt)


def test_cohen_kappa_known_values() -> None:
    assert cohen_kappa([True, False, True, False], [True, False, True, False]) == 1.0
    assert cohen_kappa([True, True, False, False], [True, False, True, False]) == 0.0
    # 9 of 10 agree, but only because both say "wrong" almost always: kappa is far below 0.9
    judge = [False] * 9 + [True]
    exact = [False] * 8 + [True, True]
    assert cohen_kappa(judge, exact) == pytest.approx((0.9 - 0.74) / (1 - 0.74))
    assert cohen_kappa([False, False], [False, False]) is None


def test_grade_parses_and_keeps_the_prompt() -> None:
    judge = FakeJudge(lambda p: "score: 4\nreason: close enough")
    v = grade(judge, "Where?", "Dunmere", gold="Dunmere")
    assert (v.score, v.reason, v.judge, v.attempts) == (4, "close enough", "fake", 1)
    assert "Question: Where?" in v.prompt and "Reference answer: Dunmere" in v.prompt


def test_garbage_is_retried_then_missing_never_invented() -> None:
    judge = FakeJudge(lambda p: "I think it is fine!")
    v = grade(judge, "q", "a", retries=2)
    assert v.score is None and judge.calls == 3 and "no verdict" in v.error
    replies = iter(["???", "score: 2"])
    v = grade(FakeJudge(lambda p: next(replies)), "q", "a", retries=2)
    assert v.score == 2 and v.attempts == 2 and v.error is None


def test_pairwise_swaps_positions_to_cancel_order_bias() -> None:
    always_first = FakeJudge(lambda p: "winner: A\nreason: first is best")
    r = pairwise(always_first, "q", "good", "bad")
    assert r["winner"] == "tie" and r["position_consistent"] is False and always_first.calls == 2
    knows = FakeJudge(lambda p: "winner: A" if "Answer A: good" in p else "winner: B")
    r = pairwise(knows, "q", "good", "bad")
    assert r["winner"] == "a" and r["position_consistent"] is True
    assert pairwise(knows, "q", "bad", "good")["winner"] == "b"
    assert pairwise(FakeJudge(lambda p: "hmm"), "q", "x", "y", retries=0)["winner"] is None


def test_judge_set_reports_kappa_against_exact_match() -> None:
    records = [{"question": f"q{i}", "answer": a, "gold": g}
               for i, (a, g) in enumerate([("Paris", "Paris"), ("Rome", "Paris"), ("oslo", "Oslo"), ("x", "y")])]
    strict = FakeJudge(lambda p: "score: 5" if p.split("Reference answer: ")[1].split("\n")[0].lower()
                       == p.split("Answer: ")[-1].split("\n")[0].lower() else "score: 1")
    report = judge_set(strict, records)
    assert report["kappa_vs_exact_match"] == 1.0 and report["n_scored"] == 4 and report["judge"] == "fake"
    lenient = judge_set(FakeJudge(lambda p: "score: 5"), records)
    assert lenient["kappa_vs_exact_match"] == 0.0  # passing everything agrees half the time, by chance
    assert lenient["agreement_vs_exact_match"] == 0.5
    assert all(v["prompt"] and v["reply"] for v in lenient["verdicts"])


@pytest.fixture
def endpoint() -> Iterator[tuple[str, list[str]]]:
    """A real OpenAI-style HTTP server on 127.0.0.1 replying with the queued strings ("500": an error)."""
    queue: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            reply = queue.pop(0) if queue else "score: 3"
            if reply == "500":
                self.send_response(500)
                self.end_headers()
                return
            body = reply.encode() if reply.startswith("{") else json.dumps(
                {"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1", queue
    server.shutdown()
    server.server_close()


def test_endpoint_judge_retries_errors_and_garbage(endpoint: tuple[str, list[str]]) -> None:
    url, queue = endpoint
    judge = EndpointJudge(url, model="tiny")
    assert judge.name == f"endpoint:tiny@{url}"
    queue += ["500", '{"not": "openai"}', "score: 5\nreason: right"]
    v = grade(judge, "q", "a", retries=2)
    assert v.score == 5 and v.attempts == 3
    queue += ["500", "500", "500"]
    v = grade(judge, "q", "a", retries=2)
    assert v.score is None and "judge unavailable" in v.error


def test_endpoint_down_is_marked_missing() -> None:
    port = free_port()  # a port nobody listens on
    judge = EndpointJudge(f"http://127.0.0.1:{port}/v1", timeout=2)
    with pytest.raises(JudgeUnavailable):
        judge.ask("hi")
    v = grade(judge, "q", "a", retries=1)
    assert v.score is None and v.attempts == 2 and "ConnectError" in v.error


def test_micro_model_as_judge(micro_model_dir: Path) -> None:
    from llmlab.runtime import load

    with load(micro_model_dir) as m:
        judge = ModelJudge(m, max_tokens=12)
        v = grade(judge, "Where is Graevom?", "Gufokrei", gold="Gufokrei", retries=0)
        strict = ModelJudge(m, constrained=True)
        c = grade(strict, "Where is Graevom?", "Gufokrei", gold="Gufokrei", retries=0)
        p = pairwise(strict, "Where is Graevom?", "Gufokrei", "Nifustai")
    # constrained: the verdict is always one of the allowed answers, picked by the model's likelihood
    assert strict.name.endswith("+constrained") and c.score in range(1, 6) and c.attempts == 1
    assert p["winner"] in ("a", "b", "tie") and p["verdicts"][0]["reply"].startswith("winner: ")
    assert judge.name.startswith("llmlab:") and v.reply is not None and v.attempts == 1
    # a tiny model rarely writes "score: N"; when it does not, the score stays missing
    assert (v.score is None) == ("score" not in v.reply.lower() or v.error is not None)
