"""The GT Studio HTTP API: the client, response envelopes, and the pure policy (classify, backoff)."""
