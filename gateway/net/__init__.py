"""Hand-written network code, fenced: see README.md in this folder for each module's design note."""
