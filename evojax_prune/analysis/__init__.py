"""After a search: ensembles of the front, the report, Grad-CAM explanations."""
