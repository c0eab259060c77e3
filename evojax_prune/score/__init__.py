"""Scoring trained heads: accuracy, MEM and the ODIN robustness objective."""
