"""Raw rows -> TRL columns: reading files, field layouts, the empty-label filter and the demo suite."""
