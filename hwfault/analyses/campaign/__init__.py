"""Fault-injection campaigns: planning, running (local or Dask), journaling (SQLite) and statistics."""
