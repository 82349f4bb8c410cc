"""The blinded LLM judge: prompt, schema, validation."""
