"""Stage 0, what the data is: task specs, the values they declare, and loading their rows."""
