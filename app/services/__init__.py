"""Business rules of the service, shared by the REST API, the dashboard and the CLI."""
