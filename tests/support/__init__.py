"""Helpers that give tests real services: Redis, PostgreSQL, Celery workers."""
