"""LightningModules: recognition and retrieval on the shared STOP video model."""
