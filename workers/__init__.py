"""Defeater's execution engine: tasks, provider adapters, limits, retries, the judge, executors."""
