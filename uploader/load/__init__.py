"""Manifest → ledger, all or nothing: the merge, the empty-ledger fast path, forked slice readers."""
