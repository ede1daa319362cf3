"""Developer tools: code generation and contract builds."""
