"""Kepler's figures, one module per kind, all drawn with the one style in `style`."""
