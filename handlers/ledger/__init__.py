"""The built-in task ledger for Refonte-style sources: the rules (`rules`) as pure functions."""
