"""Stages 1-2, a law and its constants: parse and compile formulas, fit them, check shape, bootstrap."""
