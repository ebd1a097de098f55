"""Using fine-tuned models: which engine model a request names, the engine client, usage."""
