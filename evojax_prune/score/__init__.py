"""Scoring trained heads: accuracy, MEM and the robustness objective (an OoD score, ODIN by default)."""
