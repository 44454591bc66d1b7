"""Read and validate manifest files (CSV/TSV, JSONL, Parquet; columns, values, video frames): pure."""
