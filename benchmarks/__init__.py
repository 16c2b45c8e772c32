"""`make bench`: what STOP's prompts cost on top of a frozen CLIP, and whether data loading keeps up."""
