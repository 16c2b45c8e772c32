"""Model code: frozen CLIP backbone, prompt modules and the STOP video model (no Lightning here)."""
