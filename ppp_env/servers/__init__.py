"""Servers: throwaway local PostgreSQL servers, Docker Compose, and provisioning (databases,
``{db}_admin`` / ``{db}_app`` roles, grants, postgres_fdw)."""
