"""The run directory: its format (rundir), atomic writes, the compilation cache."""
