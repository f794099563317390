"""What the Agents station offers and shows, read from the store, the shipped specs and the trace store:
which agents can be picked (agent artifacts first, then ``spec:<name>`` for each spec in ``agents/``),
the spec behind a pick, the models whose demo world can be indexed, a run's traced steps as rows,
the titled sources beside an answer, which run the trace picker shows, and the agent's graph as
Graphviz DOT (drawn offline by ``st.graphviz_chart``).

```python
from llmlab.agents.choices import agent_choices, graph_dot, source_cards, spec_of, trace_rows
choice = agent_choices(store)[0]
spec = spec_of(store, choice)
rows = trace_rows(TraceStore.for_store(store).steps(reply.run_id))
caption, cards = source_cards(reply, hits)       # hits: the "hits" of the run's retrieve steps
dot = graph_dot(agent.graph.get_graph(), model_nodes=spec.uses_model())
```
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from llmlab.agents.spec import AgentSpec, load_spec, shipped_specs
from llmlab.store import Artifact, Store
from llmlab.world import find_world

SPEC_PREFIX = "spec:"
DEFAULT_SPEC = "rag-rules"  # rules for grading and checking: what a small model can drive


def agent_choices(store: Store) -> list[str]:
    """Agent artifacts in the store first, then the shipped specs (``spec:rag-rules``)."""
    return [a.name for a in store.list(kind="agent")] + [f"{SPEC_PREFIX}{s}" for s in shipped_specs()]


def spec_of(store: Store, choice: str) -> AgentSpec:
    """The AgentSpec behind a choice of ``agent_choices``."""
    if choice.startswith(SPEC_PREFIX):
        return load_spec(choice[len(SPEC_PREFIX):])
    return load_spec(choice, store=store)


def default_index(names: list[str], wanted: str | None) -> int:
    """The position of ``wanted`` in ``names``, else 0 (the first)."""
    return names.index(wanted) if wanted in names else 0


def default_agent(choices: list[str]) -> int:
    """Which of ``agent_choices`` to open on: the first agent artifact, else the ``DEFAULT_SPEC``."""
    first = next((i for i, c in enumerate(choices) if not c.startswith(SPEC_PREFIX)), None)
    return first if first is not None else default_index(choices, f"{SPEC_PREFIX}{DEFAULT_SPEC}")


def world_sources(store: Store) -> list[str]:
    """Artifacts (other than indexes) that descend from a demo world, whose documents can be indexed."""
    return [a.name for a in store.list() if a.kind != "index" and find_world(store, a) is not None]


def shorten(value: Any, n: int = 160) -> str:
    """``value`` as text of at most ``n`` characters (cut with an ellipsis)."""
    text = str(value)
    return text if len(text) <= n else text[: n - 1] + "…"


def trace_rows(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One table row per traced step (``TraceStore.steps``): its number, node, latency, tokens, the
    documents it retrieved and its inputs and outputs, shortened."""
    return [{"#": s["seq"], "node": s["node"], "ms": s["latency_ms"], "tokens": s["tokens"],
             "retrieved": ", ".join(s["retrieved_ids"]), "inputs": shorten(s["inputs"]),
             "outputs": shorten(s["outputs"])} for s in steps]


# ----- sources beside an answer -----
def world_titles(store: Store, index: Artifact) -> dict[str, str]:
    """Document id -> title of the demo world an index was built from (empty for other indexes)."""
    world = find_world(store, index)
    return {d["id"]: d.get("title", "") for d in world.documents} if world else {}


def title_of(hit: Mapping[str, Any], titles: Mapping[str, str] | None = None) -> str:
    """A hit's title: the index's metadata, else the demo world's document, else the text's first line."""
    lines = (line.strip(" #") for line in str(hit.get("text", "")).splitlines())
    first_line = next((line for line in lines if line), "")
    return (hit.get("title") or (titles or {}).get(hit.get("doc_id", "")) or shorten(first_line, 80)
            or str(hit.get("doc_id", "")))


def source_cards(reply: Any, hits: Iterable[Mapping[str, Any]], titles: Mapping[str, str] | None = None,
                 snippet: int = 220) -> tuple[str, list[dict[str, Any]]]:
    """What goes beside an answer (an ``AgentReply``), given the hits its searches returned: the caption
    and one card per source the answer used, or per document retrieved when it refused. A card:
    ``n`` (the answer's [n], None for retrieved ones), ``title``, ``doc_id``, ``score`` (None when
    no search found it, e.g. the calculator), ``snippet`` of the chunk and ``cited``."""
    best: dict[str, Mapping[str, Any]] = {}
    for h in hits:
        key = h.get("chunk_id") or h.get("doc_id", "")
        if key not in best or h.get("score", 0.0) > best[key].get("score", 0.0):
            best[key] = h

    def card(n: int | None, hit: Mapping[str, Any], cited: bool) -> dict[str, Any]:
        title = title_of(hit, titles)
        # the chunk without its heading when that is the title ("# Bodo Trastel", or a first line)
        body = re.sub(rf"^(#+\s*{re.escape(title)}\b|{re.escape(title)}[ \t]*\n)", "", str(hit.get("text", "")).strip())
        text = " ".join(body.split())
        return {"n": n, "title": title, "doc_id": str(hit.get("doc_id", "")), "score": hit.get("score"),
                "snippet": shorten(text, snippet) if text else "", "cited": cited}

    if reply.sources:
        return "Sources", [card(s["n"], best.get(s.get("chunk_id") or s["doc_id"], s), s.get("cited", True))
                           for s in reply.sources]
    if best:
        return "Retrieved, not used", [card(None, h, False) for h in best.values()]
    return "Sources", []


# ----- the trace picker -----
def run_to_show(ids: list[str], picked: str | None, followed: str | None,
                newest: str | None) -> tuple[str, str]:
    """Which run the trace picker shows (``ids``: newest first) and the run it follows now: the run
    of the newest question asked here (else the newest run). The user's ``picked`` run stays shown
    until a new run comes (``followed``: what the picker followed on the previous page run)."""
    target = newest if newest in ids else ids[0]
    if picked in ids and target == followed:
        return picked, target  # type: ignore[return-value]
    return target, target


# ----- the graph -----
def _dot_id(name: str) -> str:
    return json.dumps(name)  # a double-quoted DOT id, quotes and backslashes escaped


def graph_dot(graph: Any, *, model_nodes: Iterable[str] = ()) -> str:
    """Graphviz DOT of a LangGraph graph's drawable form (``compiled.get_graph()``: ``nodes`` and
    ``edges``): start and end as small circles, the nodes that use the chat model filled blue,
    conditional edges dashed. ``st.graphviz_chart`` draws it in the browser, without a network."""
    uses_model = set(model_nodes)
    lines = ["digraph agent {", "  rankdir=TB;", '  bgcolor="transparent";',
             '  node [shape=box, style="rounded,filled", fillcolor="#f0f2f6", fontname="Helvetica"];',
             '  edge [fontname="Helvetica", fontsize=10];']
    for node in graph.nodes:
        if re.fullmatch(r"__\w+__", node):  # LangGraph's __start__ and __end__
            lines.append(f'  {_dot_id(node)} [label={_dot_id(node.strip("_"))}, shape=circle, '
                         'fillcolor="#d9d9d9", fontsize=10];')
        elif node in uses_model:
            lines.append(f'  {_dot_id(node)} [fillcolor="#cfe2ff", tooltip="uses the chat model"];')
        else:
            lines.append(f"  {_dot_id(node)};")
    for e in graph.edges:
        attrs = (['style="dashed"'] if e.conditional else []) + \
            ([f"label={_dot_id(str(e.data))}"] if e.data is not None else [])
        tail = f" [{', '.join(attrs)}]" if attrs else ""
        lines.append(f"  {_dot_id(e.source)} -> {_dot_id(e.target)}{tail};")
    return "\n".join([*lines, "}"])
