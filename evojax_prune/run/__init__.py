"""The run directory: its format, written atomically and read back validated (rundir)."""
