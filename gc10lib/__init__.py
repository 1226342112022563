"""gc10lib."""
