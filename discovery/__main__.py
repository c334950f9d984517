"""`python -m discovery ...` is `kepler ...`."""
from discovery.cli import entry

entry()
