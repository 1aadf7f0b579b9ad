"""The lip-sync engine: media in, media out. Knows nothing of jobs, storage or the web."""
