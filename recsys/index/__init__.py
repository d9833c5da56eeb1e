"""The item-embedding index: versioned LanceDB tables (``table``), the in-memory HNSW graph
(``hnsw``) and top-k search over a published version (``search``)."""
