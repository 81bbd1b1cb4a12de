"""Torch-free runtimes: bundle runners, KV-cache management, budget tools and the provider bench."""
