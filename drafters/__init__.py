"""Drafters: propose draft trees for the verifier (ARCHITECTURE.md "The step")."""
