"""llmreg: push, pull and run jobs on the LLM model registry over its REST API."""
