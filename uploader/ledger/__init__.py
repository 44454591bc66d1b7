"""Durable job state: engine, schema and models, claims and leases, results, status and export rows."""
