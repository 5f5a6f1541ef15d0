"""Burr drop-in tests: Burr 0.43's documented behaviour, with only the imports changed."""
