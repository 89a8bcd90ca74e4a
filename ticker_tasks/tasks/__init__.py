"""Thin Celery tasks: decode arguments, call the domain, apply the retry policy."""
