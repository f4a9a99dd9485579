"""Plain structures every layer shares: annotation records, the model's batch, boxes."""
