"""Retrieval for agents: ingest documents, build an ``index`` artifact, search it, evaluate retrieval.

```python
from llmlab.rag.index import IndexConfig, build_index
from llmlab.rag.search import Searcher
build_index(IndexConfig(name="demo-index", source="world"), store=store)
hits = Searcher.open("demo-index", store=store).search("Where does Bodo live?", k=5, mode="hybrid")
```

Modules: ``ingest`` (reading files, chunking), ``embedder`` (the offline embedding model),
``index`` (the step), ``search`` (dense, BM25, hybrid fusion, filters, rerank), ``metrics``
(pure ranking and answer metrics), ``beir`` (BEIR-layout loaders and ``llmlab eval retrieval``).
Nothing heavy is imported until used.
"""
