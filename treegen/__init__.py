"""treegen: create labelled training data with an LLM by exploring a search tree under a hard cost limit."""

__version__ = "0.1.0"
