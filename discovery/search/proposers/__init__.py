"""Proposers: where candidate formulas come from (the offline grammar, an LLM, or both)."""
