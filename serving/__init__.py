"""Online serving: Feast online lookup → user tower → LanceDB vector search.

Not built yet: issue 5. It reads the online store that ``recsys.store.materialize`` fills.
"""
