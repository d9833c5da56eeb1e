"""Online serving: a FastAPI app (``serving.app.create_app``) answering recommendation
requests from the current model version, and ``python -m serving`` to run it.

Feast online lookup → user tower → item search in the version's LanceDB table (in memory
up to 32M floats); the version is swapped atomically when the pipeline promotes a new one.
"""
