"""Small helpers with no relground dependency: atomic file writes, device / seed / thread settings."""
