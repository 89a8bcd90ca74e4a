"""Database layer: typed models, engine and session factory, repositories."""
