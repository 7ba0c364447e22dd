"""In-project pretraining recipes for the backbones (data disjoint from the digit streams)."""
