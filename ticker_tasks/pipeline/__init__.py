"""Pure functions on decoded tick rows: validate, merge latest state, publish plans.

Nothing here knows Celery; Redis clients are passed in (see ARCHITECTURE.md).
"""
