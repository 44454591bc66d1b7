"""Ledger → API: the submit loop, pacing, the resolver of uncertain rows, the run summary, batches."""
