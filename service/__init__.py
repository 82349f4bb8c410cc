"""Defeater: the API, the ledger, datasets, model configs, jobs and the command line."""
