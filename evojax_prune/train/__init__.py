"""Training the heads: the plan (EngineConfig resolved), the chunk layouts, the steps, the epoch loop."""
