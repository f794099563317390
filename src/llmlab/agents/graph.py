"""The agent: a LangGraph StateGraph built from an ``AgentSpec``, with memory and tracing.

```python
from llmlab.agents import Agent
agent = Agent("rag", store=store, index="demo-index", model="demo")   # spec name/path/dict/AgentSpec
reply = agent.ask("Where does Bodo live?", thread_id="t1")             # .answer .sources .refused .run_id
for event in agent.stream("And his job?", thread_id="t1"): ...        # {"type": "token"|"step"|"done"}
print(agent.draw())                                                   # mermaid text of the graph
```

The graph: ``route`` -> (``calculate`` | ``retrieve``) -> ``grade`` -> (``answer`` | ``rewrite`` ->
``retrieve`` | ``refuse``); ``answer`` -> ``check`` -> (end | ``refuse``). Which nodes use the chat
model and which a rule comes from the spec (see ``llmlab.agents.spec``); the answer is always the
model's. Document text is data: every hit goes into the prompt inside ``<document>`` fences (a
fence-closing tag inside a document is neutralised) and the system prompt says not to follow
instructions found there. Conversation memory is LangGraph's sqlite checkpointer (by default
``<store>/.agent-memory.db``), so a thread survives a restart; every run's steps go to the trace
store (``llmlab.agents.trace``).
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

from langchain_core.callbacks import UsageMetadataCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from llmlab.agents.spec import AgentSpec, load_spec
from llmlab.agents.tools import SearcherLike, calculator_tool, find_expression, search_tool
from llmlab.agents.trace import TraceStore
from llmlab.data import fence_documents as fence
from llmlab.errors import ConfigError, NotFoundError

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from llmlab.store import Store

MEMORY_FILE = ".agent-memory.db"
_WORD = re.compile(r"[a-z0-9]+")
STOP_WORDS = frozenset(
    "a an the is are was were be been of in on at to for from by with and or not what which who whom whose "
    "where when why how does do did has have had it its this that these those there their his her he she "
    "they them you your i me my we our name tell about can could would should will shall may might please "
    "kind sort thing things one".split())
_YES = re.compile(r"\b(yes|relevant|supported|search)\b", re.I)


def content_words(text: str) -> list[str]:
    """Lower-cased words of ``text`` without stop words (what the rules compare)."""
    return [w for w in _WORD.findall(text.lower()) if w not in STOP_WORDS]


def word_overlap(words: list[str], text: str) -> float:
    """Share of ``words`` found in ``text`` (a word matches a longer one it starts: live ~ lives)."""
    if not words:
        return 0.0
    have = set(_WORD.findall(text.lower()))
    found = sum(1 for w in words if w in have or any(h.startswith(w) and len(w) >= 4 for h in have))
    return found / len(words)


def names_in(question: str) -> list[str]:
    """Capitalised words after the first (proper names, e.g. "Bodo", "Victoria"), lower-cased."""
    words = re.findall(r"[A-Za-z][A-Za-z0-9'-]*", question)[1:]
    return [w.lower() for w in words if w[0].isupper() and w.lower() not in STOP_WORDS]


def relevant_by_overlap(question: str, text: str, threshold: float) -> bool:
    """The grading rule: every proper name of the question occurs in ``text``, and at least
    ``threshold`` of its key words do."""
    have = set(_WORD.findall(text.lower()))
    if any(not set(_WORD.findall(n)) <= have for n in names_in(question)):
        return False
    return word_overlap(content_words(question), text) >= threshold


class AgentState(TypedDict, total=False):
    messages: Annotated[list[BaseMessage], add_messages]
    question: str
    query: str
    route: str
    hits: list[dict[str, Any]]
    relevant: list[dict[str, Any]]
    attempts: int
    answer: str
    sources: list[dict[str, Any]]
    refused: bool


@dataclass
class AgentReply:
    """What one question got: the answer, its sources (doc_id, title, n), whether it refused."""

    answer: str
    sources: list[dict[str, Any]] = field(default_factory=list)
    refused: bool = False
    run_id: str | None = None
    retrieved_ids: list[str] = field(default_factory=list)  # every document any search returned
    searches: list[list[str]] = field(default_factory=list)  # the doc ids of each search, in order
    queries: list[str] = field(default_factory=list)
    contexts: list[str] = field(default_factory=list)  # text of the sources the answer was given
    seconds: float = 0.0
    prompt_tokens: int = 0  # over every model call of the answer (rewrite, answer, check, retries)
    completion_tokens: int = 0


def open_searcher(index: str | None, store: Store) -> SearcherLike:
    """The ``llmlab.rag.search.Searcher`` of the index the spec names (default: the newest ``index``)."""
    from llmlab.rag.search import Searcher

    if index is None:
        found = store.list(kind="index")
        if not found:
            raise NotFoundError("The store holds no index for the agent to search.",
                                "Build one first: `llmlab index --name demo-index --source world`.")
        index = found[0].name
    return Searcher.open(index, store=store)


class Agent:
    """A RAG agent built from a spec (see module doc). ``llm`` and ``searcher`` may be given directly
    (tests, notebooks); otherwise they come from the spec. ``memory``: a sqlite path, or False for none.
    One agent answers one question at a time (it keeps the current run's trace id); make one per
    thread of execution, which is cheap when the model and searcher are passed in."""

    def __init__(self, spec: str | Path | dict[str, Any] | AgentSpec, *, store: Store | None = None,
                 llm: BaseChatModel | None = None, searcher: SearcherLike | None = None,
                 memory: str | Path | bool = True, index: str | None = None, model: str | None = None,
                 mode: str | None = None, k: int | None = None, trace: bool = True):
        from llmlab.store import Store

        self.store = store or Store()
        self.spec = load_spec(spec, store=self.store).with_overrides(index=index, model=model, mode=mode, k=k)
        self._llm = llm
        self._searcher = searcher
        self._owns_llm, self._owns_searcher = llm is None, searcher is None
        self.traces = TraceStore.for_store(self.store) if trace else None
        self._conn: sqlite3.Connection | None = None
        checkpointer = None
        if memory is not False:
            from langgraph.checkpoint.sqlite import SqliteSaver

            path = self.store.root / MEMORY_FILE if memory is True else Path(memory)  # type: ignore[arg-type]
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, check_same_thread=False)
            checkpointer = SqliteSaver(self._conn)
        self._run_id: str | None = None
        self._tokens = 0
        self.graph = self._build().compile(checkpointer=checkpointer)

    # ----- parts, made on first use -----
    @property
    def llm(self) -> BaseChatModel:
        if self._llm is None:
            from llmlab.agents.chat_model import chat_model_for

            self._llm = chat_model_for(self.spec.model, store=self.store)
        return self._llm

    @property
    def searcher(self) -> SearcherLike:
        if self._searcher is None:
            self._searcher = open_searcher(self.spec.retriever.index, self.store)
        return self._searcher

    def _ask_model(self, messages: list[BaseMessage], config: Any) -> str:
        reply = self.llm.invoke(messages, config)
        usage = getattr(reply, "usage_metadata", None) or {}
        self._tokens += int(usage.get("total_tokens", 0))
        return reply.content if isinstance(reply.content, str) else str(reply.content)

    def _yes(self, prompt: str, config: Any) -> bool:
        return bool(_YES.search(self._ask_model([HumanMessage(prompt)], config)))

    # ----- nodes -----
    def _route(self, state: AgentState, config: Any) -> dict[str, Any]:
        rule = self.spec.nodes.route
        if rule.use == "off":
            return {"route": "retrieve"}
        if rule.use == "model":
            prompt = rule.prompt or ("Should this question be answered with a calculator or by searching "
                                     "documents? Reply with one word: calculator or search.\n\nQuestion: {question}")
            text = self._ask_model([HumanMessage(prompt.format(question=state["question"]))], config)
            use_calc = "calculator" in text.lower() and find_expression(state["question"]) is not None
        else:
            use_calc = find_expression(state["question"]) is not None
        return {"route": "calculate" if use_calc else "retrieve"}

    def _calculate(self, state: AgentState, config: Any) -> dict[str, Any]:
        expr = find_expression(state["question"]) or state["question"]
        value = calculator_tool().invoke({"expression": expr})
        answer = f"{expr} = {value}"
        return {"answer": answer, "sources": [{"n": 0, "doc_id": "calculator", "title": "calculator"}],
                "refused": False, "messages": [AIMessage(answer)]}

    def _retrieve(self, state: AgentState, config: Any) -> dict[str, Any]:
        r = self.spec.retriever
        query = state.get("query") or state["question"]
        hits = search_tool(self.searcher, mode=r.mode, k=r.k, filters=r.filters).invoke({"query": query})
        return {"hits": hits}

    def _grade(self, state: AgentState, config: Any) -> dict[str, Any]:
        node = self.spec.nodes.grade
        relevant = []
        for h in state.get("hits", []):
            if node.use == "model":
                prompt = node.prompt or ("Does the document below help answer the question? Reply yes or no.\n\n"
                                         "{document}\n\nQuestion: {question}")
                ok = self._yes(prompt.format(document=fence([h], self.spec.context_chars),
                                             question=state["question"]), config)
            elif node.rule == "score":
                ok = h["score"] >= node.threshold
            else:
                ok = relevant_by_overlap(state["question"], f"{h['title']} {h['text']}", node.threshold)
            if ok:
                relevant.append(h)
        return {"relevant": relevant}

    def _after_grade(self, state: AgentState) -> str:
        if state.get("relevant"):
            return "answer"
        return "rewrite" if state.get("attempts", 0) < self.spec.max_retries else "refuse"

    def _rewrite(self, state: AgentState, config: Any) -> dict[str, Any]:
        node = self.spec.nodes.rewrite
        if node.use == "model":
            prompt = node.prompt or ("Rewrite this question as a short search query. Reply with the query "
                                     "only.\n\nQuestion: {question}")
            query = self._ask_model([HumanMessage(prompt.format(question=state["question"]))], config).strip()
        else:
            query = " ".join(content_words(state["question"]))
        return {"query": query or state["question"], "attempts": state.get("attempts", 0) + 1}

    def _history(self, state: AgentState) -> list[BaseMessage]:
        earlier = list(state.get("messages", []))[:-1]  # the last one is this turn's question
        turns = self.spec.memory_turns
        return earlier[-2 * turns:] if turns else []

    def _fit(self, state: AgentState, relevant: list[dict[str, Any]]) -> list[BaseMessage]:
        """The answer prompt, its sources shortened until it fits a runtime model's context (other
        models have no known context: ``context_chars`` alone limits them)."""
        budget = self.spec.context_chars
        while True:
            user = self.spec.prompts.user.replace("{sources}", fence(relevant, budget)) \
                .replace("{question}", state["question"])
            messages = [SystemMessage(self.spec.prompts.system), *self._history(state), HumanMessage(user)]
            counter = getattr(self.llm, "prompt_tokens", None)
            if counter is None:
                return messages
            n_ctx = self.llm.model.n_ctx  # type: ignore[attr-defined]
            need = counter(messages) + self.llm.max_tokens  # type: ignore[attr-defined]
            if need <= n_ctx:
                return messages
            if budget <= 0:
                raise ConfigError(f"The question (with the prompts and conversation) needs {need} tokens but the "
                                  f"model's context holds {n_ctx}.",
                                  "Ask a shorter question, start a new conversation, or use a model with a longer "
                                  "context.")
            budget = budget // 2 if budget > 50 else 0

    def _answer(self, state: AgentState, config: Any) -> dict[str, Any]:
        relevant = state.get("relevant", [])
        messages = self._fit(state, relevant)
        answer = self._ask_model(messages, config).strip()
        cited = sorted({int(n) for n in re.findall(r"\[(\d+)\]", answer) if 0 < int(n) <= len(relevant)})
        chosen = cited or list(range(1, len(relevant) + 1))
        sources = [{"n": n, "doc_id": relevant[n - 1]["doc_id"], "title": relevant[n - 1]["title"],
                    "chunk_id": relevant[n - 1]["chunk_id"], "cited": bool(cited)} for n in chosen]
        refused = not answer or "don't know" in answer.lower() or "do not know" in answer.lower()
        return {"answer": answer, "sources": sources, "refused": refused}

    def _check(self, state: AgentState, config: Any) -> dict[str, Any]:
        node = self.spec.nodes.check
        if state.get("refused"):
            return {"refused": True}
        if node.use == "off":
            return {"refused": False}
        text = "\n".join(f"{h['title']} {h['text']}" for h in state.get("relevant", []))
        if node.use == "model":
            prompt = node.prompt or ("Is the answer supported by the documents? Reply yes or no.\n\n"
                                     "{documents}\n\nQuestion: {question}\nAnswer: {answer}")
            ok = self._yes(prompt.format(documents=fence(state.get("relevant", []), self.spec.context_chars),
                                         question=state["question"], answer=state["answer"]), config)
        else:
            ok = word_overlap(content_words(re.sub(r"\[\d+\]", " ", state["answer"])), text) >= node.threshold
        return {"refused": not ok}

    def _after_check(self, state: AgentState) -> str:
        return "refuse" if state.get("refused") else "done"

    def _done(self, state: AgentState, config: Any) -> dict[str, Any]:
        return {"messages": [AIMessage(state["answer"])]}

    def _refuse(self, state: AgentState, config: Any) -> dict[str, Any]:
        answer = self.spec.prompts.refusal
        return {"answer": answer, "sources": [], "refused": True, "messages": [AIMessage(answer)]}

    # ----- the graph -----
    def _traced(self, name: str, fn: Callable[[AgentState, Any], dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        keys = {"route": ("question",), "calculate": ("question",), "retrieve": ("query", "question"),
                "grade": ("question",), "rewrite": ("question", "attempts"), "answer": ("question",),
                "check": ("answer",), "done": (), "refuse": ()}[name]

        def node(state: AgentState, config: RunnableConfig) -> dict[str, Any]:
            self._tokens = 0
            t0 = time.perf_counter()
            update = fn(state, config)
            if self.traces is not None and self._run_id is not None:
                hits = update.get("hits") or (state.get("relevant") if name in ("answer", "check") else None) \
                    or update.get("relevant") or []
                outputs = {k: v for k, v in update.items() if k not in ("messages", "hits", "relevant")}
                if "hits" in update:
                    outputs["hits"] = [{k: h[k] for k in ("doc_id", "title", "score")} for h in update["hits"]]
                if "relevant" in update:
                    outputs["relevant"] = [h["doc_id"] for h in update["relevant"]]
                self.traces.record(self._run_id, node=name, inputs={k: state.get(k) for k in keys},
                                   outputs=outputs, retrieved_ids=[h["chunk_id"] for h in hits],
                                   tokens=self._tokens, latency_ms=(time.perf_counter() - t0) * 1000)
            return update

        return node

    def _build(self) -> StateGraph:
        g = StateGraph(AgentState)
        for name in ("route", "calculate", "retrieve", "grade", "rewrite", "answer", "check", "done", "refuse"):
            g.add_node(name, self._traced(name, getattr(self, f"_{name}")))
        g.add_edge(START, "route")
        g.add_conditional_edges("route", lambda s: s["route"], ["calculate", "retrieve"])
        g.add_edge("calculate", END)
        g.add_edge("retrieve", "grade")
        g.add_conditional_edges("grade", self._after_grade, ["answer", "rewrite", "refuse"])
        g.add_edge("rewrite", "retrieve")
        g.add_edge("answer", "check")
        g.add_conditional_edges("check", self._after_check, {"refuse": "refuse", "done": "done"})
        g.add_edge("done", END)
        g.add_edge("refuse", END)
        return g

    def draw(self) -> str:
        """The graph as mermaid text (for the notebook, the app and the docs)."""
        return self.graph.get_graph().draw_mermaid()

    # ----- running -----
    def _input(self, question: str) -> dict[str, Any]:
        if not question or not question.strip():
            raise ConfigError("The question is empty.", "Ask something.")
        return {"messages": [HumanMessage(question)], "question": question, "query": question, "route": "",
                "hits": [], "relevant": [], "attempts": 0, "answer": "", "sources": [], "refused": False}

    def _config(self, thread_id: str) -> dict[str, Any]:
        return {"configurable": {"thread_id": thread_id}, "recursion_limit": 10 + 3 * self.spec.max_retries}

    def stream(self, question: str, *, thread_id: str = "default") -> Iterator[dict[str, Any]]:
        """Events while answering: ``{"type": "step", "node", "update"}`` after each node,
        ``{"type": "token", "text"}`` for each piece of the answer as the model writes it, and finally
        ``{"type": "done", "reply": AgentReply}``."""
        t0 = time.perf_counter()
        self._run_id = self.traces.start(agent=self.spec.name, question=question, thread_id=thread_id) \
            if self.traces else None
        final: dict[str, Any] = {}
        searches: list[list[str]] = []  # the doc ids each search returned (a retry adds one)
        usage = UsageMetadataCallbackHandler()  # the tokens of every model call, summed per model
        try:
            for mode, chunk in self.graph.stream(self._input(question), {**self._config(thread_id),
                                                                          "callbacks": [usage]},
                                                 stream_mode=["updates", "messages"]):
                if mode == "messages":
                    msg, meta = chunk
                    if meta.get("langgraph_node") == "answer" and isinstance(msg.content, str) and msg.content:
                        yield {"type": "token", "text": msg.content}
                    continue
                for node, update in chunk.items():
                    update = update or {}
                    final.update({k: v for k, v in update.items() if k != "messages"})
                    if "hits" in update:
                        searches.append([h["doc_id"] for h in update["hits"]])
                    yield {"type": "step", "node": node,
                           "update": {k: v for k, v in update.items() if k != "messages"}}
        except BaseException:
            if self._run_id and self.traces:
                self.traces.finish(self._run_id, answer=None, status="error")
            self._run_id = None
            raise
        reply = AgentReply(answer=final.get("answer", ""), sources=final.get("sources", []),
                           refused=bool(final.get("refused")), run_id=self._run_id,
                           retrieved_ids=list(dict.fromkeys(d for hits in searches for d in hits)),
                           searches=searches,
                           queries=list(dict.fromkeys(q for q in [question, final.get("query")] if q)),
                           contexts=[f"{h['title']}: {h['text']}" for h in final.get("relevant", [])],
                           seconds=round(time.perf_counter() - t0, 3),
                           prompt_tokens=sum(u["input_tokens"] for u in usage.usage_metadata.values()),
                           completion_tokens=sum(u["output_tokens"] for u in usage.usage_metadata.values()))
        if self._run_id and self.traces:
            self.traces.finish(self._run_id, answer=reply.answer, sources=[s["doc_id"] for s in reply.sources],
                               status="refused" if reply.refused else "done")
        self._run_id = None
        yield {"type": "done", "reply": reply}

    def ask(self, question: str, *, thread_id: str = "default") -> AgentReply:
        """Answer one question in a thread (its earlier turns are remembered)."""
        reply = None
        for event in self.stream(question, thread_id=thread_id):
            if event["type"] == "done":
                reply = event["reply"]
        assert reply is not None
        return reply

    def history(self, thread_id: str = "default") -> list[dict[str, str]]:
        """The thread's conversation so far, as role/content dicts."""
        snap = self.graph.get_state(self._config(thread_id))
        msgs = (snap.values or {}).get("messages", []) if snap else []
        return [{"role": "user" if m.type == "human" else "assistant", "content": str(m.content)} for m in msgs]

    def close(self) -> None:
        """Release the searcher this agent opened, the model it loaded and the memory file."""
        if self._owns_searcher and self._searcher is not None and hasattr(self._searcher, "close"):
            self._searcher.close()
            self._searcher = None
        if self._owns_llm and self._llm is not None and hasattr(self._llm, "model"):
            self._llm.model.close()  # type: ignore[attr-defined]
            self._llm = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def answer_closed_book(llm: BaseChatModel, question: str, system: str) -> str:
    """The chat model's answer without any retrieval (the baseline that retrieval must beat)."""
    reply = llm.invoke([SystemMessage(system), HumanMessage(question)])
    return (reply.content if isinstance(reply.content, str) else str(reply.content)).strip()
