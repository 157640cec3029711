"""FastAPI application: routes call app.services; they hold no business rules."""
