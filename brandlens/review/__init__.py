"""The review app: analysts browse the scored archive, check labels, correct them and try the model.

``brandlens review --scores ARCHIVE/scores`` serves it locally (FastAPI + Jinja2 on uvicorn) over
DuckDB; corrections go to an append-only JSON-lines log that ``brandlens corrections`` turns
into a training manifest for the bottleneck job.
"""
