"""Metrics, the split protocol and the human-law benchmark: how every number Kepler reports is obtained."""
