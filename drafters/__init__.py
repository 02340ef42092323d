"""Drafters: propose draft trees for the verifier (DESIGN.md "The step")."""
