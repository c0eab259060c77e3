"""The evolutionary search: NSGA-II, the strategies, the mask cache, the loop, its result."""
