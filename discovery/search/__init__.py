"""Stages 3-4, the discovery loop: proposers, campaign, population, executors, store and sweeps."""
