"""The API's routes, one module per group (FastAPI ``APIRouter``)."""
